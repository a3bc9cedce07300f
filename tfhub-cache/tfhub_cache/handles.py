"""Model handles: what users write, what kind of source it is, and the cache key tensorflow_hub uses.

The cache key must be ``sha1(handle)`` of exactly the string tensorflow_hub would receive, so that
``hub.load(handle)`` finds what we staged. That is why normalisation is minimal: only a missing
``https://`` in front of ``tfhub.dev``/``kaggle.com`` handles is added (tensorflow_hub would not
accept those at all); a trailing slash or ``http`` vs ``https`` stays as written, as it does there.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from dataclasses import dataclass
from typing import Literal

from tfhub_cache.errors import InvalidHandleError

HandleKind = Literal["http", "gcs_archive", "local_archive", "local_dir"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
COMPRESSED_FORMAT_QUERY = ("tf-hub-format", "compressed")
UNCOMPRESSED_FORMAT_QUERY = ("tf-hub-format", "uncompressed")

_SCHEMELESS_HOSTS = ("tfhub.dev/", "www.tfhub.dev/", "kaggle.com/models/", "www.kaggle.com/models/")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_ACCEPTED = (
    "https://tfhub.dev/<publisher>/<model>/<version>, "
    "https://www.kaggle.com/models/<owner>/<model>/<framework>/<variation>/<version> (or its long form "
    ".../models/<owner>/<model>/frameworks/<framework>/variations/<variation>/versions/<version>), "
    "any http(s):// model or .tar.gz URL, gs://<bucket>/<path>.tar.gz, or a local directory"
)


@dataclass(frozen=True)
class Handle:
    """A classified model handle.

    ``text`` is the normalised string: the one hashed into the cache key and the one to give
    ``hub.load`` so that tensorflow_hub finds the same cache entry.
    """

    text: str
    kind: HandleKind

    @property
    def cache_key(self) -> str:
        return cache_key(self.text)


def cache_key(handle: str) -> str:
    """tensorflow_hub's module directory name: the sha1 hex digest of the handle string."""
    return hashlib.sha1(handle.encode("utf8")).hexdigest()


def url_scheme(text: str) -> str:
    """The ``scheme://`` of ``text`` in lower case ('' for a plain path): the one definition of a scheme."""
    match = _SCHEME_RE.match(text)
    return match.group(1).lower() if match else ""


def is_archive_name(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def parse_handle(text: object) -> Handle:
    """Classify ``text`` without touching the network or the filesystem.

    Cheap and side-effect free so that operators can call it at DAG-parse time.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidHandleError(f"Model handle {text!r} is empty or not a string; expected {_ACCEPTED}.")
    handle = text.strip()
    lowered = handle.lower()
    if lowered.startswith(_SCHEMELESS_HOSTS):
        handle = "https://" + handle
        lowered = handle.lower()
    scheme = url_scheme(handle)
    if scheme in ("http", "https"):
        _check_http_handle(handle)
        return Handle(handle, "http")
    if scheme == "gs":
        bucket, _, name = handle[5:].partition("/")
        if not bucket or not name:
            raise InvalidHandleError(f"Model handle {handle!r} names no object; expected gs://<bucket>/<path>.tar.gz.")
        if not is_archive_name(name):
            raise InvalidHandleError(
                f"Model handle {handle!r} is a gs:// path but not a .tar.gz/.tgz/.tar archive; stage an archive, "
                "or give the gs:// SavedModel directory to the load operator directly."
            )
        return Handle(handle, "gcs_archive")
    if scheme == "file":
        handle = urllib.parse.unquote(urllib.parse.urlsplit(handle).path)
        scheme = ""
    if scheme:
        raise InvalidHandleError(f"Model handle {text!r} has unsupported scheme '{scheme}://'; expected {_ACCEPTED}.")
    if is_archive_name(handle):
        return Handle(handle, "local_archive")
    return Handle(handle, "local_dir")


def _check_http_handle(handle: str) -> None:
    parts = urllib.parse.urlsplit(handle)
    if not parts.netloc:
        raise InvalidHandleError(f"Model handle {handle!r} has no host; expected {_ACCEPTED}.")
    host = (parts.hostname or "").lower()
    segments = [s for s in parts.path.split("/") if s]
    if host in ("tfhub.dev", "www.tfhub.dev"):
        if len(segments) < 3 or not segments[-1].isdigit():
            raise InvalidHandleError(
                f"Model handle {handle!r} is not a tfhub.dev model handle; expected "
                "https://tfhub.dev/<publisher>/<model>/<version> ending in a version number, e.g. .../1."
            )
    elif host in ("kaggle.com", "www.kaggle.com") and segments[:1] == ["models"]:
        if kaggle_model_path(segments) is None:
            raise InvalidHandleError(
                f"Model handle {handle!r} is not a Kaggle model handle; expected "
                "https://www.kaggle.com/models/<owner>/<model>/<framework>/<variation>/<version> or "
                "https://www.kaggle.com/models/<owner>/<model>/frameworks/<framework>/variations/<variation>"
                "/versions/<version>."
            )


#: The long Kaggle form's fixed words, by position after ``models/<owner>/<model>/``.
_KAGGLE_LONG_WORDS = {3: "frameworks", 5: "variations", 7: "versions"}


def kaggle_model_path(segments: list[str]) -> tuple[str, str, str, str, str] | None:
    """``(owner, model, framework, variation, version)`` of a Kaggle model URL path, short or long form.

    Short: ``models/<owner>/<model>/<framework>/<variation>/<version>``; long (Kaggle's own pages):
    ``models/<owner>/<model>/frameworks/<framework>/variations/<variation>/versions/<version>``.
    None when ``segments`` is neither.
    """
    if segments[:1] != ["models"] or not segments[-1:] or not segments[-1].isdigit():
        return None
    if len(segments) == 6:
        return (segments[1], segments[2], segments[3], segments[4], segments[5])
    if len(segments) == 9 and all(segments[i].lower() == word for i, word in _KAGGLE_LONG_WORDS.items()):
        return (segments[1], segments[2], segments[4], segments[6], segments[8])
    return None


def kaggle_equivalents(handle: str) -> list[str]:
    """The other spellings of the same Kaggle model as ``handle`` (short/long form, with or without ``www.``).

    Each is its own tensorflow_hub cache key (sha1 of the handle as written), but the same model:
    staging any of them after another is an alias, not a second download. Empty for other handles.
    """
    parts = urllib.parse.urlsplit(handle)
    if (parts.hostname or "").lower() not in ("kaggle.com", "www.kaggle.com") or parts.query:
        return []
    path = kaggle_model_path([s for s in parts.path.split("/") if s])
    if path is None:
        return []
    owner, model, framework, variation, version = path
    forms = [
        f"models/{owner}/{model}/{framework}/{variation}/{version}",
        f"models/{owner}/{model}/frameworks/{framework}/variations/{variation}/versions/{version}",
    ]
    urls = [f"{parts.scheme}://{host}/{form}" for form in forms for host in ("www.kaggle.com", "kaggle.com")]
    return [u for u in urls if u != handle]


def require_cacheable(handle: object) -> Handle:
    """The parsed ``handle`` of a model that can be in the cache; a local directory cannot (it is used in place).

    For everything that waits for or watches a cache entry (sensors, update checks): such a handle
    would never be staged, so waiting on it could only time out.
    """
    parsed = parse_handle(handle)
    if parsed.kind == "local_dir":
        raise InvalidHandleError(
            f"{parsed.text!r} is a local directory: it is used in place and never cached, so it has no cache entry "
            "or upstream to watch; give a tfhub.dev/Kaggle handle or an http(s)/gs:// archive URL (or use a "
            "FileSensor for a directory)."
        )
    return parsed


def with_format_query(url: str, query: tuple[str, str]) -> str:
    """Append ``tf-hub-format=...`` the way tensorflow_hub does (existing parameters kept)."""
    parts = urllib.parse.urlparse(url)
    pairs = urllib.parse.parse_qsl(parts.query)
    pairs.append(query)
    return parts._replace(query=urllib.parse.urlencode(pairs)).geturl()
