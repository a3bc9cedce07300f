"""``ls`` / ``verify`` / ``prune`` on real caches: staged from the loopback hub, and one filled by tensorflow_hub.

Ages are set with ``os.utime`` on the metadata file, which is exactly what a cache hit touches,
so no test waits for time to pass.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from stage_helpers import NAMES, StagedModels

from tfhub_cache.cache.inventory import list_entries, parse_age, parse_size, prune, verify
from tfhub_cache.cache.layout import EntryNames, new_uid
from tfhub_cache.cache.locks import CacheLock
from tfhub_cache.cache.staging import lookup_entry, stage
from tfhub_cache.errors import ConfigurationError, InvalidHandleError
from tfhub_cache.storage.local import LocalStorage


def names_of(cache_dir: str, key: str) -> list[str]:
    return sorted(n for n in os.listdir(cache_dir) if n.startswith(key))


def entry_size(cache_dir: str, key: str) -> int:
    total = 0
    for name in names_of(cache_dir, key):
        path = Path(cache_dir, name)
        if path.is_symlink():
            continue  # the tensorflow_hub view of the current revision: no bytes of its own
        total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return total


def snapshot(cache_dir: str) -> dict[str, tuple[int, int]]:
    """Every file and dir below the cache with (size, mtime_ns): proves a dry run changed nothing."""
    root = Path(cache_dir)
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- parsing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10G", 10 * 1024**3),
        ("512M", 512 * 1024**2),
        ("1.5GB", 1_500_000_000),
        ("2 KiB", 2048),
        ("100kb", 100_000),
        ("2048", 2048),
        (2048, 2048),
        ("0", 0),
        ("1T", 1024**4),
    ],
)
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["10X", "-1G", "", "G", "1.2.3M", True])
def test_parse_size_rejects_nonsense_naming_the_input(text: object) -> None:
    with pytest.raises(ConfigurationError, match="Size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", 7 * 86400),
        ("12h", 12 * 3600),
        ("30m", 1800),
        ("90s", 90),
        ("3600", 3600),
        ("2w", 14 * 86400),
        ("1.5h", 5400),
        (timedelta(hours=1), 3600),
        (0, 0),
    ],
)
def test_parse_age(text: object, expected: float) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["7x", "-5", "d", "", "1 day"])
def test_parse_age_rejects_nonsense_naming_the_input(text: object) -> None:
    with pytest.raises(ConfigurationError, match="Age"):
        parse_age(text)


# -- ls --------------------------------------------------------------------------------------------------


def test_ls_reports_complete_partial_and_locked_entries(staged_models: StagedModels, cache_dir: str) -> None:
    storage = LocalStorage(cache_dir)
    v1, small_a = staged_models["demo_v1"], staged_models["small_a"]
    partial_key = "f" * 40
    dead_tmp = Path(cache_dir, EntryNames(partial_key).tmp(new_uid()), "variables")  # a stager died mid-way
    dead_tmp.mkdir(parents=True)
    (dead_tmp / "variables.index").write_bytes(b"x" * 10)
    lock = CacheLock(storage, EntryNames(small_a["cache_key"]).lock, new_uid())
    lock.acquire()
    try:
        entries = {e["key"]: e for e in list_entries(storage)}
    finally:
        lock.release()

    assert entries[v1["cache_key"]]["state"] == "complete"
    assert entries[small_a["cache_key"]]["state"] == "locked"
    assert entries[small_a["cache_key"]]["lock_stale"] is False
    assert entries[partial_key]["state"] == "partial" and entries[partial_key]["handle"] is None
    assert entries[partial_key]["size"] == 10
    e = entries[v1["cache_key"]]
    assert (e["handle"], e["path"], e["etag"], e["staged_at"]) == (
        v1["handle"],
        v1["path"],
        v1["etag"],
        v1["staged_at"],
    )
    assert e["files"] == v1["files"] and e["size"] == entry_size(cache_dir, v1["cache_key"])
    order = [e["handle"] for e in list_entries(storage) if e["handle"]]
    assert order == [staged_models[n]["handle"] for n in reversed(NAMES)]  # most recently used first


def test_a_cache_hit_records_last_use(staged_models: StagedModels, cache_dir: str) -> None:
    storage = LocalStorage(cache_dir)
    oldest = staged_models["demo_v1"]
    stage(oldest["handle"], cache_dir)  # a hit touches the metadata
    assert list_entries(storage)[0]["handle"] == oldest["handle"]
    assert (
        prune(storage, max_total_bytes=entry_size(cache_dir, oldest["cache_key"]))["kept"][0]["key"]
        == (oldest["cache_key"])
    )


# -- verify ----------------------------------------------------------------------------------------------


def test_verify_passes_on_intact_entries(staged_models: StagedModels, cache_dir: str) -> None:
    report = verify(LocalStorage(cache_dir))
    assert report["ok"] is True
    assert [e["status"] for e in report["entries"]] == ["ok"] * 4


@pytest.mark.parametrize(
    ("damage", "kind"),
    [
        ("delete", "missing"),
        ("flip_byte", "changed"),  # same size: only the CRC32C can tell
        ("append", "changed"),
        ("add_file", "extra"),
    ],
)
def test_verify_detects_deleted_altered_and_extra_files(
    staged_models: StagedModels, cache_dir: str, damage: str, kind: str
) -> None:
    target = staged_models["small_b"]
    model = Path(target["path"])
    victim = model / "variables" / "variables.data-00000-of-00001"
    if damage == "delete":
        victim.unlink()
    elif damage == "flip_byte":
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
    elif damage == "append":
        with open(victim, "ab") as f:
            f.write(b"\0")
    else:
        (model / "variables" / "notes.txt").write_text("hello")

    report = verify(LocalStorage(cache_dir))

    assert report["ok"] is False
    by_key = {e["key"]: e for e in report["entries"]}
    bad = by_key[target["cache_key"]]
    expected = "variables/notes.txt" if kind == "extra" else "variables/variables.data-00000-of-00001"
    assert bad["status"] == "damaged" and bad[kind] == [expected]
    assert all(e["status"] == "ok" for k, e in by_key.items() if k != target["cache_key"])
    assert verify(LocalStorage(cache_dir), staged_models["demo_v1"]["handle"])["ok"] is True  # one handle only


def test_verify_of_an_unstaged_handle_says_so(cache_dir: str, handle_of: Any) -> None:
    Path(cache_dir).mkdir(parents=True)  # an existing, empty cache (a missing one is an error)
    report = verify(LocalStorage(cache_dir), handle_of("medium"))
    assert report["ok"] is False and report["entries"][0]["status"] == "not staged"


# -- prune -----------------------------------------------------------------------------------------------


def test_prune_removes_least_recently_used_entries_until_under_budget(
    hub: Any, staged_models: StagedModels, cache_dir: str
) -> None:
    keys = {n: staged_models[n]["cache_key"] for n in NAMES}
    sizes = {n: entry_size(cache_dir, keys[n]) for n in NAMES}
    budget = sizes["small_b"] + sizes["demo_v2"]  # room for exactly the two most recently used

    report = prune(LocalStorage(cache_dir), max_total_bytes=budget)

    assert [r["key"] for r in report["removed"]] == [keys["demo_v1"], keys["small_a"]]  # oldest first
    assert report["freed_bytes"] == sizes["demo_v1"] + sizes["small_a"]
    assert report["total_bytes"] == budget and report["over_budget"] is False
    assert names_of(cache_dir, keys["demo_v1"]) == [] and names_of(cache_dir, keys["small_a"]) == []
    assert {k["key"] for k in report["kept"]} == {keys["small_b"], keys["demo_v2"]}
    assert lookup_entry(LocalStorage(cache_dir), staged_models["demo_v2"]["handle"]) is not None
    json.dumps(report)  # the operator's XCom

    hub.reset_stats()
    again = stage(staged_models["demo_v1"]["handle"], cache_dir)  # a pruned model is simply staged again
    assert again["downloaded"] is True and hub.stats()["models"]["/google/demo_v1/1"]["archive_full"] == 1


def test_prune_by_age_of_last_use(staged_models: StagedModels, cache_dir: str) -> None:
    report = prune(LocalStorage(cache_dir), max_age="250s")
    oldest = {staged_models["demo_v1"]["handle"], staged_models["small_a"]["handle"]}
    assert {r["handle"] for r in report["removed"]} == oldest
    assert all("unused for" in r["reason"] for r in report["removed"])
    assert {e["handle"] for e in list_entries(LocalStorage(cache_dir))} == {
        staged_models["small_b"]["handle"],
        staged_models["demo_v2"]["handle"],
    }


def test_prune_never_removes_entries_in_keep(staged_models: StagedModels, cache_dir: str) -> None:
    kept_by_handle, kept_by_key = staged_models["demo_v1"], staged_models["small_b"]

    report = prune(
        LocalStorage(cache_dir), max_total_bytes=0, keep=[kept_by_handle["handle"], kept_by_key["cache_key"]]
    )

    remaining = {e["key"] for e in list_entries(LocalStorage(cache_dir))}
    assert remaining == {kept_by_handle["cache_key"], kept_by_key["cache_key"]}
    unkept = {staged_models["small_a"]["cache_key"], staged_models["demo_v2"]["cache_key"]}
    assert {r["key"] for r in report["removed"]} == unkept
    assert report["over_budget"] is True  # the budget cannot be met without touching keep
    assert verify(LocalStorage(cache_dir))["ok"] is True


def test_prune_rejects_a_bad_keep_handle(cache_dir: str) -> None:
    with pytest.raises(InvalidHandleError, match="keep"):
        prune(LocalStorage(cache_dir), keep=["ftp://nope/x"])


def test_prune_never_touches_an_entry_a_live_stager_holds(staged_models: StagedModels, cache_dir: str) -> None:
    storage = LocalStorage(cache_dir)
    busy = staged_models["demo_v1"]  # the oldest: first to go if it were not locked
    names = EntryNames(busy["cache_key"])
    lock = CacheLock(storage, names.lock, new_uid())
    lock.acquire()
    work = Path(cache_dir, names.tmp(lock.uid))  # the holder's download in progress
    work.mkdir()
    (work / "saved_model.pb").write_bytes(b"\0" * 100)
    try:
        dry = prune(storage, max_total_bytes=0, keep=[busy["handle"]], dry_run=True)
        assert dry["cleaned"] == [] and len(dry["removed"]) == 3
        report = prune(storage, max_total_bytes=0)
        assert report["cleaned"] == [] and work.exists()
        assert busy["cache_key"] not in {r["key"] for r in report["removed"]}
        (kept,) = [k for k in report["kept"] if k["key"] == busy["cache_key"]]
        assert "locked by" in kept["reason"] and socket.gethostname() in kept["reason"]
        assert Path(cache_dir, EntryNames(busy["cache_key"]).lock).read_bytes() == lock.content
    finally:
        lock.release()
    assert lookup_entry(storage, busy["handle"]) is not None
    assert len(report["removed"]) == 3


def test_prune_keeps_a_fresh_lock_of_another_host_but_cleans_an_old_one(
    staged_models: StagedModels, cache_dir: str
) -> None:
    storage = LocalStorage(cache_dir)
    fresh, old = staged_models["demo_v1"], staged_models["small_a"]
    Path(cache_dir, EntryNames(fresh["cache_key"]).lock).write_text(f"other-host.42.{new_uid()}")
    old_lock = Path(cache_dir, EntryNames(old["cache_key"]).lock)
    old_lock.write_text(f"other-host.43.{new_uid()}")
    long_ago = time.time() - 7200
    os.utime(old_lock, (long_ago, long_ago))

    report = prune(storage, max_age="1d", lock_timeout=3600)

    assert Path(cache_dir, EntryNames(fresh["cache_key"]).lock).exists()
    assert not old_lock.exists()
    (cleaned,) = report["cleaned"]
    assert cleaned["name"] == old_lock.name and "stale lock" in cleaned["reason"]
    assert report["removed"] == [] and lookup_entry(storage, old["handle"]) is not None


def test_prune_cleans_up_after_a_dead_stager(staged_models: StagedModels, cache_dir: str) -> None:
    storage = LocalStorage(cache_dir)
    names = EntryNames(staged_models["small_b"]["cache_key"])
    uid = new_uid()
    Path(cache_dir, names.lock).write_text(f"{socket.gethostname()}.{dead_pid()}.{uid}")
    tmp = Path(cache_dir, names.tmp(uid))
    (tmp / "variables").mkdir(parents=True)
    (tmp / "variables" / "variables.data-00000-of-00001").write_bytes(b"\1" * 1000)
    orphan_tmp = Path(cache_dir, EntryNames("e" * 40).tmp(new_uid()))  # no lock at all
    orphan_tmp.mkdir()
    (orphan_tmp / "saved_model.pb").write_bytes(b"\2" * 500)
    half_model = Path(cache_dir, "d" * 40)  # no marker, no metadata: what a temp cleaner leaves
    (half_model / "variables").mkdir(parents=True)
    (half_model / "variables" / "variables.index").write_bytes(b"\3" * 200)

    before = list_entries(storage)
    report = prune(storage)  # no limits: only garbage goes

    states = {e["key"]: e["state"] for e in before}
    assert states[names.key] == "locked" and states["e" * 40] == "partial" and states["d" * 40] == "partial"
    assert {r["key"] for r in report["removed"]} == {"e" * 40, "d" * 40}
    assert {c["name"] for c in report["cleaned"]} == {names.lock, names.tmp(uid)}
    assert report["freed_bytes"] == 1000 + 500 + 200
    assert not tmp.exists() and not orphan_tmp.exists() and not half_model.exists()
    assert not Path(cache_dir, names.lock).exists()
    assert {e["key"] for e in list_entries(storage)} == {r["cache_key"] for r in staged_models.values()}
    assert verify(storage)["ok"] is True


def test_dry_run_reports_the_same_plan_and_changes_nothing(staged_models: StagedModels, cache_dir: str) -> None:
    storage = LocalStorage(cache_dir)
    Path(cache_dir, EntryNames("e" * 40).tmp(new_uid())).mkdir()
    before = snapshot(cache_dir)

    dry = prune(storage, max_total_bytes="20K", dry_run=True)

    assert snapshot(cache_dir) == before
    assert dry["dry_run"] is True and dry["removed"]
    real = prune(storage, max_total_bytes="20K")
    assert [r["key"] for r in real["removed"]] == [r["key"] for r in dry["removed"]]
    assert real["freed_bytes"] == dry["freed_bytes"] and real["total_bytes"] == dry["total_bytes"] <= 20 * 1024


# -- an entry tensorflow_hub filled -------------------------------------------------------------------------


@pytest.mark.slow
def test_entries_filled_by_tensorflow_hub_are_listed_unverifiable_and_prunable(
    hub: Any, handle_of: Any, cache_dir: str
) -> None:
    handle = handle_of("small_a")
    env = {**os.environ, "TFHUB_CACHE_DIR": cache_dir}
    code = "import sys, tensorflow_hub as hub; print(hub.resolve(sys.argv[1]))"
    out = subprocess.run([sys.executable, "-c", code, handle], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    storage = LocalStorage(cache_dir)

    (entry,) = list_entries(storage)
    assert entry["path"] == out.stdout.strip().splitlines()[-1]
    assert (entry["state"], entry["handle"], entry["source"], entry["etag"]) == (
        "complete",
        handle,
        "tensorflow_hub",
        None,
    )
    assert verify(storage)["entries"][0]["status"] == "no manifest"
    report = prune(storage, max_total_bytes=0)
    assert [r["handle"] for r in report["removed"]] == [handle]
    assert os.listdir(cache_dir) == []


# -- the operator ----------------------------------------------------------------------------------------


def test_prune_operator_validates_at_parse_time() -> None:
    from airflow_provider_tfhub.operators.prune import TFHubPruneCacheOperator

    with pytest.raises(ConfigurationError, match="Age '7x'"):
        TFHubPruneCacheOperator(task_id="prune", max_age="7x")
    with pytest.raises(ConfigurationError, match="Size '10Q'"):
        TFHubPruneCacheOperator(task_id="prune", max_total_bytes="10Q")
    op = TFHubPruneCacheOperator(task_id="prune", max_age="7d", max_total_bytes="1.5GB")
    assert (op.max_age, op.max_total_bytes) == (7 * 86400, 1_500_000_000)
    assert set(op.template_fields) == {"cache_dir", "keep"}


def test_prune_operator_returns_the_report(staged_models: StagedModels, cache_dir: str) -> None:
    from airflow_provider_tfhub.operators.prune import TFHubPruneCacheOperator

    keep = staged_models["demo_v1"]["handle"]
    op = TFHubPruneCacheOperator(task_id="prune", cache_dir=cache_dir, max_age=250, keep=keep)

    report = op.execute({})

    assert {r["handle"] for r in report["removed"]} == {staged_models["small_a"]["handle"]}
    assert {e["handle"] for e in list_entries(LocalStorage(cache_dir))} == {
        keep,
        staged_models["small_b"]["handle"],
        staged_models["demo_v2"]["handle"],
    }


# -- a gs:// cache -----------------------------------------------------------------------------------------


def test_ls_verify_and_prune_on_a_gcs_cache(hub: Any, handle_of: Any, gcs_cache: str) -> None:
    from tfhub_cache.storage import open_storage

    older, newer = (stage(handle_of(name), gcs_cache) for name in ("small_a", "small_b"))
    assert older["handle"] is not None and newer["cache_key"] is not None
    storage = open_storage(gcs_cache)
    hit = stage(older["handle"], gcs_cache, storage_options={"touch_interval": 0})  # records use in custom metadata
    assert hit["downloaded"] is False

    entries = list_entries(storage)
    assert [e["handle"] for e in entries] == [older["handle"], newer["handle"]]
    assert all(e["state"] == "complete" and e["path"].startswith("gs://") for e in entries)
    assert verify(storage)["ok"] is True
    storage.write_bytes(f"{newer['cache_key']}.revisions/{newer['revision']}/variables/variables.index", b"tampered")
    assert verify(storage, newer["handle"])["entries"][0]["changed"] == ["variables/variables.index"]

    report = prune(storage, max_total_bytes=entries[0]["size"])

    assert [r["handle"] for r in report["removed"]] == [newer["handle"]]  # the least recently used
    assert [e["handle"] for e in list_entries(storage)] == [older["handle"]]
    assert not [n for n in storage.list_root() if n.startswith(newer["cache_key"])]
