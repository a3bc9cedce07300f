"""Holds: a revision in use is never pruned, until it is released or its hold expires.

The story of the issue: a training run stages (and holds) p1; a refresh publishes v2; ``prune
--superseded-max-age 0s`` must keep p1 and say it is held; once the run's teardown released the
hold, the same prune removes p1. Also: an expired hold protects nothing, many holders share a
revision, the CLI and ``ls --json`` show holds, and all of it on ``gs://`` (the GCS emulator).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import gcs_helpers
import pytest
from airflow_utils import get_dag, xcom
from stage_helpers import Version

from tfhub_cache.cache import holds
from tfhub_cache.cache.inventory import list_entries, prune
from tfhub_cache.cache.layout import EntryNames
from tfhub_cache.cache.staging import stage
from tfhub_cache.errors import CacheError, ConfigurationError
from tfhub_cache.handles import cache_key
from tfhub_cache.storage import Storage, open_storage
from tfhub_cache.storage.gcs import GCSStorage

CLI = str(Path(sys.executable).with_name("tfhub-cache"))
MODEL_PATH = "/google/held/1"


@pytest.fixture
def handle(hub: Any, versions: dict[str, Version]) -> str:
    url: str = hub.add_model(MODEL_PATH, versions["v1"].archive)
    return url


def refreshed(hub: Any, handle: str, cache: str, versions: dict[str, Version]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stage v1, publish v2 upstream, refresh: (first, second) staged-model dicts."""
    first = stage(handle, cache)
    hub.add_model(MODEL_PATH, versions["v2"].archive)
    second = stage(handle, cache, refresh="if_changed")
    assert first["revision"] and second["revision"] and first["revision"] != second["revision"]
    return dict(first), dict(second)


def revision_exists(storage: Storage, handle: str, rev: str) -> bool:
    return storage.has_file(EntryNames(cache_key(handle)).revision_meta(rev))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=120)


def check_hold_story(storage: Storage, handle: str, cache: str, first: dict[str, Any]) -> None:
    """Two holders on p1: prune keeps it (and says held) until both released; expired holds protect nothing."""
    p1 = first["revision"]
    holds.hold(storage, handle, holder="train-a", ttl="1h", revision=p1)
    holds.hold(storage, handle, holder="train-b", ttl="1h", revision=p1)

    report = prune(storage, superseded_max_age="0s")
    assert report["removed_revisions"] == []
    [held] = report["held"]
    assert held["revision"] == p1 and sorted(held["holders"]) == ["train-a", "train-b"]
    assert held["reason"].startswith("held by ") and revision_exists(storage, handle, p1)

    [entry] = list_entries(storage)
    by_rev = {r["revision"]: r for r in entry["revisions"]}
    assert sorted(h["holder"] for h in by_rev[p1]["holds"]) == ["train-a", "train-b"]
    assert all(h["expired"] is False for h in by_rev[p1]["holds"])

    assert [h["holder"] for h in holds.release(storage, handle, holder="train-a")] == ["train-a"]
    report = prune(storage, superseded_max_age="0s")
    assert report["removed_revisions"] == [] and report["held"][0]["holders"] == ["train-b"]

    holds.release(storage, handle, holder="train-b", revision=p1)
    holds.hold(storage, handle, holder="crashed-run", ttl="1s", revision=p1)
    time.sleep(1.5)
    assert [h["expired"] for h in holds.list_holds(storage)] == [True]
    report = prune(storage, superseded_max_age="0s")
    assert [r["revision"] for r in report["removed_revisions"]] == [p1] and report["held"] == []
    assert not revision_exists(storage, handle, p1)
    assert holds.list_holds(storage) == []  # the revision's holds went with it


def test_held_revisions_survive_prune_until_released_or_expired(
    hub: Any, handle: str, versions: dict[str, Version], cache_dir: str
) -> None:
    first, second = refreshed(hub, handle, cache_dir, versions)
    storage = open_storage(cache_dir)
    check_hold_story(storage, handle, cache_dir, first)
    assert Path(second["path"]).is_dir() and not Path(first["path"]).exists()


def test_held_revisions_on_gcs(hub: Any, handle: str, versions: dict[str, Version], gcs_cache: str) -> None:
    first, _second = refreshed(hub, handle, gcs_cache, versions)
    storage = GCSStorage(gcs_cache, touch_interval=0)
    check_hold_story(storage, handle, gcs_cache, first)
    assert gcs_helpers.leftovers(storage) == []


def test_a_held_entry_is_not_removed_by_max_age_or_budget(hub: Any, handle: str, cache_dir: str) -> None:
    staged = stage(handle, cache_dir)
    storage = open_storage(cache_dir)
    holds.hold(storage, handle, holder="serving", ttl="1h")  # the current revision
    report = prune(storage, max_age="0s", max_total_bytes=0)
    assert report["removed"] == [] and Path(str(staged["path"])).is_dir()
    [kept] = report["kept"]
    assert kept["reason"].startswith("held by serving")
    holds.release(storage, handle, holder="serving")
    assert [r["handle"] for r in prune(storage, max_age="0s")["removed"]] == [handle]


def test_hold_is_create_only_and_a_second_hold_extends(hub: Any, handle: str, cache_dir: str) -> None:
    staged = stage(handle, cache_dir)
    storage = open_storage(cache_dir)
    short = holds.hold(storage, handle, holder="job", ttl="1h")
    longer = holds.hold(storage, handle, holder="job", ttl="2h")
    again = holds.hold(storage, handle, holder="job", ttl="10m")  # never shortens
    assert short["revision"] == staged["revision"] and longer["expires_at"] > short["expires_at"]
    assert again["expires_at"] == longer["expires_at"] and len(holds.list_holds(storage)) == 1

    with pytest.raises(CacheError, match="no revision 'ffffffffffff'"):
        holds.hold(storage, handle, holder="job", ttl="1h", revision="ffffffffffff")
    with pytest.raises(ConfigurationError, match="TTL"):
        holds.hold(storage, handle, holder="job", ttl="0s")
    with pytest.raises(ConfigurationError, match="holder"):
        holds.hold(storage, handle, holder=" ", ttl="1h")
    with pytest.raises(CacheError, match="not staged"):
        holds.hold(storage, f"{handle}-other", holder="job", ttl="1h")


def test_cli_hold_release_holds_and_prune_say_held(
    hub: Any, handle: str, versions: dict[str, Version], cache_dir: str
) -> None:
    first, _second = refreshed(hub, handle, cache_dir, versions)
    out = cli(
        "hold",
        handle,
        "--cache-dir",
        cache_dir,
        "--holder",
        "tpu-job",
        "--ttl",
        "2d",
        "--revision",
        first["revision"],
        "--json",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["revision"] == first["revision"]

    listed = json.loads(cli("holds", "--cache-dir", cache_dir, "--json").stdout)
    assert [(h["holder"], h["revision"], h["expired"]) for h in listed] == [("tpu-job", first["revision"], False)]
    table = cli("holds", "--cache-dir", cache_dir).stdout
    assert "tpu-job" in table and "active" in table
    [entry] = json.loads(cli("ls", "--cache-dir", cache_dir, "--json").stdout)
    assert {r["revision"]: [h["holder"] for h in r["holds"]] for r in entry["revisions"]}[first["revision"]] == [
        "tpu-job"
    ]

    pruned = cli("prune", "--cache-dir", cache_dir, "--superseded-max-age", "0s")
    assert pruned.returncode == 0 and "held by tpu-job" in pruned.stdout and Path(first["path"]).is_dir()

    released = cli("release", handle, "--cache-dir", cache_dir, "--holder", "tpu-job")
    assert released.returncode == 0 and f"released {first['revision']}" in released.stdout
    pruned = json.loads(cli("prune", "--cache-dir", cache_dir, "--superseded-max-age", "0s", "--json").stdout)
    assert [r["revision"] for r in pruned["removed_revisions"]] == [first["revision"]]

    bad = cli("hold", handle, "--cache-dir", cache_dir, "--holder", "x", "--ttl", "soon")
    assert bad.returncode == 1 and "Age 'soon' is not understood" in bad.stderr


def test_bad_hold_for_fails_at_parse_time() -> None:
    from airflow_provider_tfhub.operators.load import TFHubLoadModelOperator
    from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator

    with pytest.raises(ConfigurationError, match="Age 'a week'"):
        TFHubStageModelOperator(task_id="s", handle="https://tfhub.dev/google/x/1", hold_for="a week")
    with pytest.raises(ConfigurationError, match="hold_for=0"):
        TFHubLoadModelOperator(task_id="l", handle="https://tfhub.dev/google/x/1", hold_for=0)
    TFHubStageModelOperator(task_id="t", handle="https://tfhub.dev/google/x/1", hold_for="{{ params.hold }}")


def test_a_run_holds_its_revision_and_the_teardown_releases_it_even_when_training_fails(
    hub: Any, handle: str, versions: dict[str, Version], cache_dir: str, tmp_path: Path
) -> None:
    dag = get_dag("tfhub_held_training")
    flag = tmp_path / "training-may-end"
    conf = {"handle": handle, "cache_dir": cache_dir, "wait_for": str(flag), "fail_training": True}
    storage = open_storage(cache_dir)
    seen: dict[str, Any] = {}

    def while_training() -> None:
        """What happens elsewhere while the run trains: a refresh publishes v2, then a prune runs."""
        try:
            deadline = time.monotonic() + 120
            while not holds.list_holds(storage) and time.monotonic() < deadline:
                time.sleep(0.2)
            seen["holds"] = holds.list_holds(storage)
            hub.add_model(MODEL_PATH, versions["v2"].archive)
            seen["v2"] = stage(handle, cache_dir, refresh="if_changed")["revision"]
            seen["prune"] = cli("prune", "--cache-dir", cache_dir, "--superseded-max-age", "0s").stdout
            seen["p1_after_prune"] = [revision_exists(storage, handle, h["revision"]) for h in seen["holds"]]
        finally:
            flag.touch()

    # dag.test() needs the main thread (signal handlers); the rest of the world runs beside it.
    world = threading.Thread(target=while_training, daemon=True)
    world.start()
    dr = dag.test(run_conf=conf)
    world.join(timeout=60)

    [held] = seen["holds"]
    p1 = held["revision"]
    assert held["holder"] == f"tfhub_held_training/{dr.run_id}" and not held["expired"]
    assert seen["v2"] != p1
    assert "held by tfhub_held_training/" in seen["prune"] and seen["p1_after_prune"] == [True]
    assert dr.state == "failed"  # training failed ...
    released = xcom(dr, "release", -1)  # ... and the teardown released the hold anyway
    assert [(r["revision"], r["holder"]) for r in released] == [(p1, held["holder"])]
    assert holds.list_holds(storage) == []
    report = json.loads(cli("prune", "--cache-dir", cache_dir, "--superseded-max-age", "0s", "--json").stdout)
    assert [r["revision"] for r in report["removed_revisions"]] == [p1]
