"""The staged-model record: what staging returns, what the stage operator pushes to XCom.

A ``TypedDict`` rather than a class so that XCom, Asset ``extra`` and ``--json`` output stay plain
JSON dicts, while code that builds or reads one is type-checked. :func:`staged_model` is the only
builder, so the key set cannot drift between the staging paths (cache, UNCOMPRESSED, local dir).
"""

from __future__ import annotations

from typing import Any, TypedDict


class StagedModel(TypedDict):
    """One staged model. ``path`` never changes its content while the record is in use.

    ``revision`` names the immutable copy under ``path`` (None for UNCOMPRESSED locations, local
    SavedModel dirs, and entries of a read-only cache written before revisions existed).
    """

    handle: str | None
    path: str | None
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
    path: str | None,
    load_format: str = "COMPRESSED",
    downloaded: bool = False,
    refreshed: bool = False,
    meta: dict[str, Any] | None = None,
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
