"""The records' builders (core/records.py) and the metadata files they produce: same keys as before.

The keys of ``<sha1>.meta.json`` and ``<sha1>.revisions/<rev>.json`` are a contract with caches
written by earlier releases and with tools that read them, so a staging's files are compared with
the exact key sets here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tfhub_cache.cache.layout import EntryNames
from tfhub_cache.cache.records import entry_meta, revision_meta
from tfhub_cache.cache.staging import stage
from tfhub_cache.handles import cache_key

REVISION_KEYS = {
    "archive_bytes",
    "bytes",
    "checked_at",
    "etag",
    "files",
    "format_version",
    "handle",
    "last_modified",
    "manifest",
    "marker",
    "mirror",
    "page_urls",
    "revision",
    "sha256",
    "source_url",
    "staged_at",
}


def _json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def test_a_staging_writes_the_metadata_keys_it_always_wrote(hub: Any, handle_of: Any, cache_dir: str) -> None:
    handle = handle_of("small_a")
    staged = stage(handle, cache_dir)
    names = EntryNames(cache_key(handle))
    entry = _json(Path(cache_dir) / names.meta)
    revision = _json(Path(cache_dir) / names.revision_meta(staged["revision"] or ""))
    assert set(revision) == REVISION_KEYS
    assert set(entry) == REVISION_KEYS | {"view"}
    assert entry["view"] == entry["revision"] == staged["revision"]
    assert {k: v for k, v in entry.items() if k != "view"} == revision
    assert set(next(iter(revision["manifest"].values()))) == {"size", "crc32c"}


def test_a_superseded_revision_gains_superseded_at_and_nothing_else(
    hub: Any, handle_of: Any, cache_dir: str, model_archives: dict[str, Path]
) -> None:
    handle = handle_of("demo_v1")
    first = stage(handle, cache_dir)
    hub.add_model("/google/demo_v1/1", model_archives["demo_v2"])  # upstream re-publishes
    second = stage(handle, cache_dir, refresh="always")
    assert second["refreshed"] and second["revision"] != first["revision"]
    names = EntryNames(cache_key(handle))
    old = _json(Path(cache_dir) / names.revision_meta(first["revision"] or ""))
    assert set(old) == REVISION_KEYS | {"superseded_at"}
    assert "superseded_at" not in _json(Path(cache_dir) / names.meta)


def test_revision_meta_carries_a_record_over_but_not_what_belongs_to_the_entry_or_file() -> None:
    base = {"handle": "h", "revision": "r1", "view": "r0", "superseded_at": "t", "format_version": 2, "old_key": 1}
    built = revision_meta(base, revision="r2")
    assert built == {"handle": "h", "revision": "r2", "old_key": 1}  # keys of older releases are kept
    assert revision_meta(base, superseded_at="now")["superseded_at"] == "now"


def test_entry_meta_sets_the_view_and_drops_superseded_at() -> None:
    built = entry_meta({"handle": "h", "revision": "r1", "superseded_at": "t"}, view="r0", checked_at="now")
    assert built == {"handle": "h", "revision": "r1", "view": "r0", "checked_at": "now"}


@pytest.mark.parametrize("build", [lambda: revision_meta(revison="r1"), lambda: entry_meta({}, view=None, vew="x")])
def test_a_misspelt_key_is_an_error_not_a_new_key(build: Any) -> None:
    with pytest.raises(TypeError, match=r"unknown .* keys"):
        build()
