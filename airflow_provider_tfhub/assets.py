"""``tfhub://`` Asset URIs: one URI per model, whatever spelling of the handle the DAG author used.

``tfhub://<host>/<path>`` names the model of ``https://<host>/<path>`` (``tfhub://tfhub.dev/google/
nnlm-en-dim50/2``). The normaliser is registered under ``asset-uris`` in provider info, so Airflow
applies it to every ``Asset("tfhub://...")``: scheme and host lower-cased, ``www.tfhub.dev`` ->
``tfhub.dev``, ``www.kaggle.com`` -> ``kaggle.com``, no query, fragment or trailing slash. Producers
(the stage operator with ``outlets``) and consumers (``schedule=[Asset(...)]``) then agree.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Any

from tfhub_cache.handles import parse_handle

if TYPE_CHECKING:
    from urllib.parse import SplitResult

    from airflow.sdk import Asset

SCHEME = "tfhub"
_HOST_ALIASES = {"www.tfhub.dev": "tfhub.dev", "www.kaggle.com": "kaggle.com"}


def sanitize_uri(uri: SplitResult) -> SplitResult:
    """Normalise a ``tfhub://host/path`` URI; raise ValueError (Airflow's contract) when it names no model."""
    host = (uri.hostname or "").lower()
    if not host:
        raise ValueError(
            f"Asset URI {urllib.parse.urlunsplit(uri)!r} has no host; expected tfhub://<host>/<model path>."
        )
    netloc = _HOST_ALIASES.get(host, host) + (f":{uri.port}" if uri.port else "")
    path = "/" + "/".join(s for s in uri.path.split("/") if s)
    if path == "/":
        raise ValueError(
            f"Asset URI {urllib.parse.urlunsplit(uri)!r} names no model; expected tfhub://<host>/<model path>, "
            "e.g. tfhub://tfhub.dev/google/nnlm-en-dim50/2."
        )
    return uri._replace(scheme=SCHEME, netloc=netloc, path=path, query="", fragment="")


def asset_uri_for(handle: str) -> str:
    """``https://tfhub.dev/a/b/1`` -> ``tfhub://tfhub.dev/a/b/1`` (also for Kaggle and other http(s) handles)."""
    parsed = parse_handle(handle)
    if parsed.kind != "http":
        raise ValueError(
            f"Only http(s) model handles map to tfhub:// Asset URIs, not {parsed.text!r}; use a file:// or gs:// "
            "Asset for archives and directories."
        )
    parts = urllib.parse.urlsplit(parsed.text)
    return urllib.parse.urlunsplit(sanitize_uri(parts._replace(scheme=SCHEME)))


def create_asset(*, handle: str, name: str | None = None, extra: dict[str, Any] | None = None) -> Asset:
    """The Asset of a model handle (``asset-uris`` factory): ``create_asset(handle="https://tfhub.dev/a/b/1")``."""
    from airflow.sdk import Asset

    uri = asset_uri_for(handle)
    return Asset(uri=uri, name=name or uri, extra=extra or {})
