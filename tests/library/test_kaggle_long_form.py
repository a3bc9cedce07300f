"""The long Kaggle URL form (what Kaggle's own pages show) is a handle, and an alias of the short form;
alias index objects are pruned with their entry.

``https://kaggle.com/models/<owner>/<model>/frameworks/<fw>/variations/<var>/versions/<n>`` is
accepted by ``hub.load``; it gets its own cache key (sha1 of the handle as written, as
tensorflow_hub keys it) and is recognised as the same model as
``https://www.kaggle.com/models/<owner>/<model>/<fw>/<var>/<n>``: staging both downloads once.
The kaggle.com URLs reach the loopback hub through mirrors (only the fetched URL changes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from library.test_aliases import hub_load_offline
from tfhub_cache.cache import aliases, inventory
from tfhub_cache.cache.staging import stage
from tfhub_cache.errors import InvalidHandleError
from tfhub_cache.handles import cache_key, kaggle_equivalents, parse_handle
from tfhub_cache.storage.local import LocalStorage

LONG = "https://kaggle.com/models/google/demo/frameworks/TensorFlow2/variations/demo/versions/1"
SHORT = "https://www.kaggle.com/models/google/demo/TensorFlow2/demo/1"


def test_the_long_form_parses_and_keeps_its_own_cache_key() -> None:
    parsed = parse_handle(LONG)
    assert parsed.kind == "http" and parsed.text == LONG and parsed.cache_key == cache_key(LONG) != cache_key(SHORT)
    assert parse_handle("kaggle.com/models/google/demo/frameworks/TensorFlow2/variations/demo/versions/1").text == LONG
    assert SHORT in kaggle_equivalents(LONG) and LONG in kaggle_equivalents(SHORT)
    assert kaggle_equivalents("https://tfhub.dev/google/demo/1") == []
    for bad in (
        "https://kaggle.com/models/google/demo/frameworks/TensorFlow2/variations/demo/versions/latest",
        "https://kaggle.com/models/google/demo/framework/TensorFlow2/variations/demo/versions/1",
        "https://kaggle.com/models/google/demo/frameworks/TensorFlow2/variations/demo",
    ):
        with pytest.raises(InvalidHandleError, match="versions/<version>"):
            parse_handle(bad)


def test_long_and_short_form_download_once_and_load_offline(
    hub: Any, model_archives: dict[str, Path], tmp_path: Path
) -> None:
    for handle in (LONG, SHORT):
        hub.add_model(handle.split(".com", 1)[1], model_archives["demo_v1"])
    mirrors = {"https://kaggle.com/": f"{hub.url}/", "https://www.kaggle.com/": f"{hub.url}/"}
    cache = tmp_path / "cache"
    hub.reset_stats()

    first = stage(LONG, str(cache), mirrors=mirrors)
    second = stage(SHORT, str(cache), mirrors=mirrors)

    archives = sum(m.get("archive_full", 0) for m in hub.stats()["models"].values())
    assert archives == 1 and first["downloaded"] is True
    assert second["downloaded"] is False and second["alias_of"] == LONG and second["sha256"] == first["sha256"]
    assert first["cache_key"] == cache_key(LONG) and second["cache_key"] == cache_key(SHORT)
    assert [[[1.0, 1.0]]] * 2 == hub_load_offline(cache, [LONG, SHORT])


def test_prune_removes_alias_index_objects_with_their_entry(
    hub: Any, model_archives: dict[str, Path], tmp_path: Path
) -> None:
    """An index object of a pruned entry goes with it; those of entries that stay are kept."""
    for handle in (LONG, SHORT):
        hub.add_model(handle.split(".com", 1)[1], model_archives["demo_v1"])
    mirrors = {"https://kaggle.com/": f"{hub.url}/", "https://www.kaggle.com/": f"{hub.url}/"}
    cache = tmp_path / "cache"
    stage(LONG, str(cache), mirrors=mirrors)
    stage(SHORT, str(cache), mirrors=mirrors)
    storage = LocalStorage(str(cache))
    indexed = aliases.index_by_entry(storage)
    assert set(indexed) == {cache_key(LONG), cache_key(SHORT)} and all(indexed.values())

    inventory.prune(storage, max_age="0s", keep=[SHORT], dry_run=True)
    assert aliases.index_by_entry(storage) == indexed
    report = inventory.prune(storage, max_age="0s", keep=[SHORT])
    assert [r["handle"] for r in report["removed"]] == [LONG] and report["cleaned"] == []
    assert aliases.index_by_entry(storage) == {cache_key(SHORT): indexed[cache_key(SHORT)]}
    # An index left by an older release (its entry long gone) is cleaned too.
    stray = aliases.index_name("https://example.com/m", "https://example.com/m")
    storage.write_bytes(stray, b'{"url": "https://example.com/m", "handle": "https://example.com/m"}')
    assert [c["name"] for c in inventory.prune(storage)["cleaned"]] == [stray]
    assert not storage.has_file(stray)
