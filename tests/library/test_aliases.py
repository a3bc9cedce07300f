"""Issue 13: aliases. A model reached through another handle's redirect chain is downloaded once.

The loopback hub behaves like tfhub.dev after the move to Kaggle: ``/google/<m>/1`` redirects to the
Kaggle-style ``/kaggle-redirect/google/<m>/1``, which redirects to the archive. Staging one handle
and then the other (in both orders) downloads the archive once; both get their own
tensorflow_hub-compatible entry, ``hub.load`` finds both offline, and pruning one never breaks the other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from stage_helpers import run_py

from tfhub_cache.cache import aliases, inventory
from tfhub_cache.cache.staging import stage
from tfhub_cache.handles import cache_key
from tfhub_cache.storage.gcs import GCSStorage
from tfhub_cache.storage.local import LocalStorage
from tfhub_cache.testing.hub import HubServer


def downloads(hub: Any, name: str) -> int:
    return int(hub.stats()["models"].get(f"/google/{name}/1", {}).get("archive_full", 0))


def hub_load_offline(cache: Path, handles: list[str]) -> list[list[list[float]]]:
    out = run_py(
        f"""
        import json, tensorflow as tf, tensorflow_hub as hub
        ys = [hub.load(h).signatures["serving_default"](x=tf.zeros([1, 2]))["y"].numpy().tolist() for h in {handles!r}]
        print(json.dumps(ys))
        """,
        env={"TFHUB_CACHE_DIR": str(cache), "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"},
    )
    return json.loads(out.strip().splitlines()[-1])


def test_page_urls_of_a_redirect_chain() -> None:
    chain = [
        "https://tfhub.dev/google/m/1?tf-hub-format=compressed",
        "https://www.kaggle.com/models/google/m/TensorFlow2/m/1?tf-hub-format=compressed",
        "https://storage.googleapis.com/bucket/m.tar.gz?X-Goog-Signature=secret",
    ]
    assert aliases.page_urls("https://tfhub.dev/google/m/1", chain) == [
        "https://tfhub.dev/google/m/1",
        "https://www.kaggle.com/models/google/m/TensorFlow2/m/1",
    ]


@pytest.mark.parametrize("kaggle_first", [False, True], ids=["tfhub-then-kaggle", "kaggle-then-tfhub"])
def test_aliases_download_once_and_both_load_offline(
    model_archives: dict[str, Path], tmp_path: Path, kaggle_first: bool
) -> None:
    cache = tmp_path / "cache"
    with HubServer() as hub:
        tfhub = hub.add_model("/google/demo_v1/1", model_archives["demo_v1"])
        kaggle = f"{hub.url}/kaggle-redirect/google/demo_v1/1"
        first, second = (kaggle, tfhub) if kaggle_first else (tfhub, kaggle)
        a = stage(first, str(cache))
        b = stage(second, str(cache))
        assert downloads(hub, "demo_v1") == 1
        assert a["downloaded"] is True and a["alias_of"] is None
        assert b["downloaded"] is False and b["alias_of"] == first
        assert b["handle"] == second and b["cache_key"] == cache_key(second) and b["path"] != a["path"]
        assert b["sha256"] == a["sha256"] and b["etag"] == a["etag"]
        assert (cache / f"{cache_key(second)}.descriptor.txt").read_text().startswith(f"Module: {second}\n")
        # the second handle is a plain hit from now on
        hub.reset_stats()
        assert stage(second, str(cache))["downloaded"] is False and hub.stats()["requests"] == 0
    assert hub_load_offline(cache, [first, second]) == [[[1.0, 1.0]], [[1.0, 1.0]]]

    # Pruning one never breaks the other: each entry has its own (hard-linked) files.
    storage = LocalStorage(str(cache))
    removed = inventory.prune(storage, max_age="0s", keep=[second])["removed"]
    assert [r["handle"] for r in removed] == [first]
    assert hub_load_offline(cache, [second]) == [[[1.0, 1.0]]]


def test_stale_index_is_ignored(model_archives: dict[str, Path], tmp_path: Path) -> None:
    """An index object whose entry was pruned costs a download, never a wrong or broken entry."""
    cache = tmp_path / "cache"
    with HubServer() as hub:
        tfhub = hub.add_model("/google/demo_v1/1", model_archives["demo_v1"])
        kaggle = f"{hub.url}/kaggle-redirect/google/demo_v1/1"
        stage(tfhub, str(cache))
        inventory.prune(LocalStorage(str(cache)), max_age="0s")
        b = stage(kaggle, str(cache))
        assert b["downloaded"] is True and b["alias_of"] is None and downloads(hub, "demo_v1") == 2


def test_no_alias_between_different_models(hub: Any, handle_of: Any, cache_dir: str) -> None:
    a, b = stage(handle_of("small_a"), cache_dir), stage(handle_of("small_b"), cache_dir)
    assert a["downloaded"] is True and b["downloaded"] is True and b["alias_of"] is None


def test_aliases_in_a_gcs_cache_are_server_side_copies(hub: Any, handle_of: Any, gcs_cache: str) -> None:
    tfhub = handle_of("small_a")
    kaggle = f"{hub.url}/kaggle-redirect/google/small_a/1"
    a = stage(tfhub, gcs_cache)
    b = stage(kaggle, gcs_cache)
    assert downloads(hub, "small_a") == 1 and b["downloaded"] is False and b["alias_of"] == tfhub
    storage = GCSStorage(gcs_cache)
    files_a = dict(storage.list_tree(cache_key(tfhub)))
    assert files_a and dict(storage.list_tree(cache_key(kaggle))) == files_a
    inventory.prune(storage, max_age="0s", keep=[kaggle])
    assert stage(kaggle, gcs_cache, offline=True)["path"] == b["path"]
    assert a["path"] != b["path"]


def test_refresh_of_an_alias_is_a_conditional_request_through_its_own_url(
    model_archives: dict[str, Path], tmp_path: Path
) -> None:
    cache = str(tmp_path / "cache")
    with HubServer() as hub:
        tfhub = hub.add_model("/google/demo_v1/1", model_archives["demo_v1"])
        kaggle = f"{hub.url}/kaggle-redirect/google/demo_v1/1"
        stage(tfhub, cache)
        b = stage(kaggle, cache)
        unchanged = stage(kaggle, cache, refresh="if_changed")
        assert unchanged["refreshed"] is False and unchanged["revision"] == b["revision"]
        assert hub.stats()["models"]["/google/demo_v1/1"]["not_modified"] == 1 and downloads(hub, "demo_v1") == 1
        hub.add_model("/google/demo_v1/1", model_archives["demo_v2"])  # upstream re-publishes
        changed = stage(kaggle, cache, refresh="if_changed")
        assert changed["refreshed"] is True and changed["sha256"] != b["sha256"] and changed["alias_of"] is None
        assert stage(tfhub, cache)["sha256"] == b["sha256"]  # the other handle keeps its model until refreshed
