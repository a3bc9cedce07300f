"""Short names for model handles, where a full URL does not fit: mapped-task labels in the Airflow grid.

A mapped stage task is otherwise shown as ``stage [0]``, ``stage [1]``... The label keeps what tells
models apart (publisher, model, version) and drops what they share (scheme, ``tfhub.dev``,
``www.kaggle.com/models``, query strings), unless handles of one mapped task would then read alike
(``https://tfhub.dev/google/x/1`` and ``https://mirror.corp/google/x/1``): those keep their host (see
:func:`ambiguous_labels`). Labels are for people only: never parse or hash them.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable

DEFAULT_MAX_LEN = 60
_HUB_HOSTS = ("tfhub.dev", "www.tfhub.dev", "kaggle.com", "www.kaggle.com")
_ELLIPSIS = "…"


def handle_label(handle: object, max_len: int = DEFAULT_MAX_LEN, *, keep_host: bool = False) -> str:
    """``https://tfhub.dev/google/nnlm-en-dim50/2`` -> ``google/nnlm-en-dim50/2``.

    Kaggle handles drop ``www.kaggle.com/models/``; other URLs keep their path (their host only when
    the path is empty); ``gs://`` and local paths keep their last two components. A label longer than
    ``max_len`` keeps its end (the model name and version), cut at a ``/`` near its start if there is one.
    ``keep_host`` puts the host of an http(s) URL in front (``tfhub.dev/google/nnlm-en-dim50/2``): for
    handles that would otherwise share a label. Never raises: anything that is not a string (an
    unrendered template argument) gives ``""``.
    """
    if not isinstance(handle, str):
        return ""
    text = handle.strip()
    if not text:
        return ""
    label = _shorten(text) or text
    host = _host(text) if keep_host else ""
    if host and not label.startswith(host):
        label = f"{host}/{label}"
    return _clip(label, max_len)


def ambiguous_labels(handles: Iterable[object], max_len: int = DEFAULT_MAX_LEN) -> frozenset[str]:
    """The labels that two or more *different* handles of ``handles`` would share.

    Equal handles (after stripping) are not ambiguous: they are the same model.
    """
    seen: dict[str, set[str]] = {}
    for handle in handles:
        label = handle_label(handle, max_len)
        if label and isinstance(handle, str):
            seen.setdefault(label, set()).add(handle.strip())
    return frozenset(label for label, distinct in seen.items() if len(distinct) > 1)


def _host(text: str) -> str:
    if "://" not in text and text.split("/", 1)[0].lower() in _HUB_HOSTS:
        text = "https://" + text
    parts = urllib.parse.urlsplit(text)
    return parts.netloc.lower() if parts.scheme.lower() in ("http", "https") else ""


def _shorten(text: str) -> str:
    if "://" not in text and text.split("/", 1)[0].lower() in _HUB_HOSTS:
        text = "https://" + text
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        host = parts.netloc.lower()
        path = parts.path.strip("/")
        if host in _HUB_HOSTS:
            if path.startswith("models/"):
                path = path[len("models/") :]
            return path or host
        return path or host
    if scheme == "gs":
        return _tail(f"{parts.netloc}/{parts.path.strip('/')}", 2)
    return _tail(text, 2)


def _tail(path: str, parts: int) -> str:
    pieces = [p for p in path.rstrip("/").split("/") if p]
    return "/".join(pieces[-parts:])


def _clip(label: str, max_len: int) -> str:
    if len(label) <= max_len:
        return label
    keep = label[-(max_len - 1) :]
    cut = keep.find("/")
    if 0 <= cut < len(keep) // 3:  # at a "/" unless that would drop most of what is left
        keep = keep[cut + 1 :]
    return _ELLIPSIS + keep
