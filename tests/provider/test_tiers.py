"""Issue 20, tiered caches: local caches in front of one gs:// upstream (the emulator), one hub download per fleet.

The fleet is 8 real processes (the ``tfhub-cache`` CLI) with 8 local caches; the hub's counters say
how many archive downloads happened. The Airflow side (hook argument, connection extra, environment,
parse-time check) is exercised with the real hook against the same emulator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tfhub_cache.cache.inventory import list_entries, verify
from tfhub_cache.cache.staging import lookup_entry
from tfhub_cache.cache.tiers import stage_tiered
from tfhub_cache.errors import ConfigurationError
from tfhub_cache.storage import open_storage
from tfhub_cache.storage.local import LocalStorage

FLEET = 8
STAGE_CLI = (sys.executable, "-m", "tfhub_cache.cli", "stage")


def downloads(hub: Any, name: str) -> int:
    model = hub.stats()["models"].get(f"/google/{name}/1", {})
    return int(model.get("archive_full", 0)) + int(model.get("archive_range", 0))


def test_a_fleet_of_8_local_caches_downloads_once_and_agrees_on_the_revision(
    hub: Any, handle_of: Any, gcs_cache: str, gcs_env: dict[str, str], tmp_path: Path
) -> None:
    handle = handle_of("demo_v1")
    caches = [str(tmp_path / f"host{i}" / "cache") for i in range(FLEET)]
    procs = [
        subprocess.Popen(
            [*STAGE_CLI, handle, "--cache-dir", cache, "--upstream-cache", gcs_cache, "--json"],
            env={**os.environ, **gcs_env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cache in caches
    ]
    outputs = [p.communicate(timeout=600) for p in procs]

    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    records = [json.loads(out) for out, _err in outputs]
    assert downloads(hub, "demo_v1") == 1, hub.stats()["models"]
    upstream = lookup_entry(open_storage(gcs_cache), handle)
    assert upstream is not None
    assert {r["revision"] for r in records} == {upstream["revision"]}
    assert sum(r["downloaded"] for r in records) == 1
    for cache, record in zip(caches, records, strict=True):
        assert record["cache_dir"] == cache and record["pulled_from"] == gcs_cache
        assert record["path"].startswith(cache)
        assert verify(LocalStorage(cache))["entries"][0]["status"] == "ok"  # the local tier is a cache like any
        assert [e["revision"] for e in list_entries(LocalStorage(cache))] == [upstream["revision"]]


def test_hits_cost_nothing_and_if_changed_asks_the_hub_once_through_the_upstream(
    hub: Any, handle_of: Any, model_archives: dict[str, Path], gcs_cache: str, tmp_path: Path
) -> None:
    handle = handle_of("demo_v1")
    local = str(tmp_path / "local")
    first = stage_tiered(handle, local, upstream_cache=gcs_cache)
    assert first["downloaded"] is True and downloads(hub, "demo_v1") == 1
    hub.reset_stats()

    hit = stage_tiered(handle, local, upstream_cache=gcs_cache)
    assert hit["revision"] == first["revision"] and hub.stats()["requests"] == 0

    unchanged = stage_tiered(handle, local, upstream_cache=gcs_cache, refresh="if_changed")
    assert unchanged["revision"] == first["revision"] and downloads(hub, "demo_v1") == 0
    assert hub.stats()["models"]["/google/demo_v1/1"]["not_modified"] == 1

    hub.add_model("/google/demo_v1/1", model_archives["demo_v2"])  # a new version upstream
    changed = stage_tiered(handle, local, upstream_cache=gcs_cache, refresh="if_changed")
    assert changed["revision"] != first["revision"] and downloads(hub, "demo_v1") == 1
    upstream = lookup_entry(open_storage(gcs_cache), handle)
    assert upstream is not None and upstream["revision"] == changed["revision"]
    assert lookup_entry(LocalStorage(local), handle)["revision"] == changed["revision"]  # type: ignore[index]


def test_a_model_already_in_the_upstream_is_pulled_without_a_hub_request(
    hub: Any, handle_of: Any, gcs_cache: str, tmp_path: Path
) -> None:
    handle = handle_of("small_a")
    stage_tiered(handle, str(tmp_path / "a"), upstream_cache=gcs_cache)
    hub.reset_stats()

    other = stage_tiered(handle, str(tmp_path / "b"), upstream_cache=gcs_cache)

    assert other["downloaded"] is False and hub.stats()["requests"] == 0


def test_the_hook_reads_upstream_cache_from_argument_and_environment(
    hub: Any, handle_of: Any, gcs_cache: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_tfhub.hooks.tfhub import TFHubHook

    handle = handle_of("small_b")
    by_argument = TFHubHook().stage(handle, str(tmp_path / "a"), upstream_cache=gcs_cache)
    assert by_argument["pulled_from"] == gcs_cache and downloads(hub, "small_b") == 1

    monkeypatch.setenv("TFHUB_UPSTREAM_CACHE", gcs_cache)
    by_environment = TFHubHook().stage(handle, str(tmp_path / "b"))
    assert by_environment["pulled_from"] == gcs_cache and by_environment["revision"] == by_argument["revision"]
    assert downloads(hub, "small_b") == 1


def test_a_bad_upstream_cache_fails_at_parse_time_naming_it() -> None:
    from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator

    with pytest.raises(
        ConfigurationError,
        match=r"Upstream cache 's3://bucket/x' \(from argument `upstream_cache`\) has an unsupported scheme",
    ):
        TFHubStageModelOperator(task_id="stage", handle="https://tfhub.dev/google/x/1", upstream_cache="s3://bucket/x")
    with pytest.raises(ConfigurationError, match="is the cache itself"):
        stage_tiered("https://tfhub.dev/google/x/1", "/tmp/c", upstream_cache="/tmp/c")
