"""The records staging writes and returns: the staged model (XCom) and the cache's metadata files.

``TypedDict`` rather than classes so that XCom, Asset ``extra``, ``--json`` output and the metadata
files stay plain JSON dicts, while code that builds or reads one is type-checked. Each has exactly
one builder, so a key set cannot drift between the paths that produce it:

* :func:`staged_model`: the staged-model dict (cache, UNCOMPRESSED, local dir);
* :func:`revision_meta`: ``<sha1>.revisions/<rev>.json`` (a fresh download, a reused or converted
  revision, an adopted tensorflow_hub dir, an alias of another entry, a superseded revision);
* :func:`entry_meta`: ``<sha1>.meta.json``, the current revision's metadata plus ``view``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict


class StagedModel(TypedDict):
    """One staged model. ``path`` never changes its content while the record is in use.

    ``revision`` names the immutable copy under ``path`` (None for UNCOMPRESSED locations, local
    SavedModel dirs, and entries of a read-only cache written before revisions existed).
    """

    handle: str | None
    path: str
    revision: str | None
    cache_dir: str | None
    cache_key: str | None
    load_format: str
    sha256: str | None
    bytes: int | None
    files: int | None
    etag: str | None
    last_modified: str | None
    source_url: str | None
    archive_bytes: int | None
    staged_at: str | None
    checked_at: str | None
    downloaded: bool
    refreshed: bool
    #: The handle whose download this entry was built from (same model reached through a redirect), else None.
    alias_of: str | None


#: Keys every staged-model dict has (the XCom contract of the stage operator).
RESULT_KEYS: tuple[str, ...] = tuple(StagedModel.__annotations__)


def staged_model(
    *,
    handle: str | None,
    path: str,
    load_format: str = "COMPRESSED",
    downloaded: bool = False,
    refreshed: bool = False,
    meta: Mapping[str, Any] | None = None,
    **fields: Any,
) -> StagedModel:
    """Build a :class:`StagedModel`: recorded ``meta`` fields first, then explicit ``fields``.

    Unknown field names raise ``TypeError`` so that a typo cannot add a key silently.
    """
    unknown = set(fields) - set(RESULT_KEYS)
    if unknown:
        raise TypeError(f"unknown staged-model keys: {sorted(unknown)}")
    recorded = meta or {}
    values: dict[str, Any] = {key: recorded.get(key) for key in RESULT_KEYS}
    values.update(fields)
    values.update(handle=handle, path=path, load_format=load_format, downloaded=downloaded, refreshed=refreshed)
    return StagedModel(**values)  # type: ignore[typeddict-item]


class ManifestRecord(TypedDict):
    """One file of a revision as staged: its size and CRC32C (base64, like GCS's), for ``verify``."""

    size: int
    crc32c: str


class RevisionMeta(TypedDict, total=False):
    """``<sha1>.revisions/<rev>.json``: one immutable revision. Not total: older releases wrote fewer keys."""

    handle: str
    revision: str
    sha256: str | None
    archive_bytes: int | None
    files: int
    bytes: int
    #: The model marker file of the tree (``saved_model.pb``...), the completeness check's target.
    marker: str
    staged_at: str | None
    checked_at: str | None
    source_url: str | None
    etag: str | None
    last_modified: str | None
    mirror: str | None
    page_urls: list[str]
    alias_of: str | None
    adopted_from: str
    manifest: dict[str, ManifestRecord]
    #: When a newer revision became current (starts the revision's grace period for prune).
    superseded_at: str
    format_version: int


class EntryMeta(RevisionMeta, total=False):
    """``<sha1>.meta.json``: the current revision's metadata, and the revision the tensorflow_hub view shows."""

    view: str | None


#: Keys of one revision that are not carried over when a revision's metadata is built from another record.
_NOT_INHERITED = ("view", "superseded_at", "format_version")
_REVISION_KEYS = frozenset(RevisionMeta.__annotations__)
_ENTRY_KEYS = frozenset(EntryMeta.__annotations__)


def revision_meta(base: Mapping[str, Any] | None = None, /, **fields: Any) -> RevisionMeta:
    """Build a :class:`RevisionMeta`: what ``base`` recorded (an earlier record), then ``fields``.

    ``view``, ``superseded_at`` and ``format_version`` of ``base`` are dropped (they describe the
    entry, the old revision's fate and the file format, not this revision); ``superseded_at`` may
    be given in ``fields``. Unknown field names raise ``TypeError`` so that a typo cannot add a key.
    """
    _check(fields, _REVISION_KEYS, "revision metadata")
    recorded = {k: v for k, v in (base or {}).items() if k not in _NOT_INHERITED}
    return RevisionMeta(**{**recorded, **fields})  # type: ignore[typeddict-item]


def entry_meta(record: Mapping[str, Any], /, *, view: str | None, **updates: Any) -> EntryMeta:
    """Build an :class:`EntryMeta`: ``record`` (a revision's or the entry's metadata), ``view``, ``updates``."""
    _check(updates, _ENTRY_KEYS, "entry metadata")
    recorded = {k: v for k, v in record.items() if k != "superseded_at"}
    return EntryMeta(**{**recorded, **updates, "view": view})  # type: ignore[typeddict-item]


def _check(fields: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = set(fields) - allowed
    if unknown:
        raise TypeError(f"unknown {what} keys: {sorted(unknown)}")
