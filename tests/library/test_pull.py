"""Issue 20, pull: a revision staged into a gs:// cache (the emulator) is copied into a local cache.

The local entry must carry the same revision id, metadata and manifest, be complete for ``verify``
and for ``hub.load(handle)`` offline, and the copy must never touch the hub or publish a damaged or
half copy. Concurrency and kills run in real subprocesses (the ``tfhub-cache`` CLI).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gcs_helpers
import pytest
from stage_helpers import run_py

import tfhub_cache
from tfhub_cache.cache.inventory import verify
from tfhub_cache.cache.layout import EntryNames, decode_meta
from tfhub_cache.cache.records import RESULT_KEYS
from tfhub_cache.cache.staging import lookup_entry, stage
from tfhub_cache.errors import CacheError, ChecksumMismatchError
from tfhub_cache.handles import cache_key
from tfhub_cache.storage import open_storage
from tfhub_cache.storage.local import LocalStorage
from tfhub_cache.testing.models import expected_output

PY = sys.executable
MiB = 1 << 20


def revision_meta_of(cache: str, handle: str, rev: str) -> dict[str, Any]:
    meta = decode_meta(open_storage(cache).read_bytes(EntryNames(cache_key(handle)).revision_meta(rev)))
    assert meta is not None
    return {k: v for k, v in meta.items() if k != "format_version"}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, "-m", "tfhub_cache.cli", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def hub_load_y(handle: str, cache: str) -> list[list[float]]:
    """``hub.load(handle)`` in a fresh process, offline, reading only ``cache``: the model's output on ones."""
    out = run_py(
        f"""
        import json, tensorflow as tf, tensorflow_hub as hub
        m = hub.load({handle!r})
        print(json.dumps(m.signatures["serving_default"](x=tf.ones([1, 3]))["y"].numpy().tolist()))
        """,
        env={"TFHUB_CACHE_DIR": cache, "TFHUB_OFFLINE": "1"},
    )
    result: list[list[float]] = json.loads(out.strip().splitlines()[-1])
    return result


def test_pull_publishes_the_shared_revision_and_hub_load_works_offline(
    hub: Any, handle_of: Any, gcs_cache: str, tmp_path: Path
) -> None:
    handle = handle_of("demo_v2")
    shared: Any = stage(handle, gcs_cache)
    hub.reset_stats()
    local = str(tmp_path / "local")

    pulled = tfhub_cache.pull(handle, source=gcs_cache, cache_dir=local)

    assert pulled["revision"] == shared["revision"]
    assert pulled["pulled_from"] == gcs_cache
    assert pulled["path"] == str(Path(local) / f"{cache_key(handle)}.revisions" / shared["revision"])
    assert {k: pulled[k] for k in ("sha256", "etag", "files", "bytes", "source_url")} == {
        k: shared[k] for k in ("sha256", "etag", "files", "bytes", "source_url")
    }
    local_meta = revision_meta_of(local, handle, shared["revision"])
    assert local_meta == revision_meta_of(gcs_cache, handle, shared["revision"])  # manifest and all
    assert verify(LocalStorage(local))["entries"][0]["status"] == "ok"
    assert hub.stats()["requests"] == 0, hub.stats()  # no hub request at all
    assert hub_load_y(handle, local) == expected_output([[1.0, 1.0, 1.0]], scale=2.0, offset=5.0)

    again = tfhub_cache.pull(handle, source=gcs_cache, cache_dir=local)
    assert again["revision"] == shared["revision"] and again["downloaded"] is False


def test_pull_reads_big_objects_as_parallel_ranged_parts(
    hub: Any, handle_of: Any, gcs_cache: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    handle = handle_of("medium")
    shared: Any = stage(handle, gcs_cache)
    monkeypatch.setenv("TFHUB_DOWNLOAD_PART_SIZE", str(64 << 10))
    local = str(tmp_path / "local")

    with caplog.at_level(logging.INFO, logger="tfhub_cache"):
        pulled: Any = tfhub_cache.pull(handle, source=gcs_cache, cache_dir=local, connections=4)

    ranged = [r.getMessage() for r in caplog.records if "with up to 4 connections" in r.getMessage()]
    assert ranged and "variables.data" in ranged[0], [r.getMessage() for r in caplog.records]
    assert revision_meta_of(local, handle, pulled["revision"])["manifest"] == shared_manifest(gcs_cache, shared)
    assert verify(LocalStorage(local))["entries"][0]["status"] == "ok"


def shared_manifest(cache: str, staged: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = revision_meta_of(cache, staged["handle"], staged["revision"])["manifest"]
    return manifest


@pytest.mark.parametrize("damage", ["corrupted", "missing"])
def test_a_damaged_shared_object_is_refused_by_name_and_nothing_is_published(
    hub: Any, handle_of: Any, gcs_cache: str, tmp_path: Path, damage: str
) -> None:
    handle = handle_of("demo_v1")
    shared: Any = stage(handle, gcs_cache)
    gcs = open_storage(gcs_cache)
    names = EntryNames(cache_key(handle))
    target = f"{names.revision(shared['revision'])}/variables/variables.index"
    if damage == "corrupted":
        data = bytearray(gcs.read_bytes(target) or b"")
        data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the CRC32C can tell
        gcs.write_bytes(target, bytes(data))
    else:
        gcs.delete(target)
    local = tmp_path / "local"

    expected = ChecksumMismatchError if damage == "corrupted" else CacheError
    with pytest.raises(expected) as info:
        tfhub_cache.pull(handle, source=gcs_cache, cache_dir=str(local))

    assert gcs.location(target) in str(info.value)
    assert "missing" in str(info.value) if damage == "missing" else "does not match" in str(info.value)
    assert lookup_entry(LocalStorage(str(local)), handle) is None
    assert sorted(p.name for p in local.iterdir()) == []  # no tmp, no lock, no revision, no metadata


def test_two_concurrent_pullers_copy_once(
    hub: Any, handle_of: Any, gcs_cache: str, gcs_env: Any, tmp_path: Path
) -> None:
    handle = handle_of("medium")
    shared: Any = stage(handle, gcs_cache)
    local = str(tmp_path / "local")

    procs = [cli("pull", handle, "--from", gcs_cache, "--cache-dir", local, "--json") for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]

    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        record = json.loads(out)
        assert record["revision"] == shared["revision"] and record["pulled_from"] == gcs_cache
    copies = sum(err.count("Pulled revision") for _out, err in outputs)
    assert copies == 1, [err for _o, err in outputs]
    assert verify(LocalStorage(local))["entries"][0]["status"] == "ok"


def test_a_killed_pull_leaves_nothing_complete_and_the_next_pull_finishes_it(
    gcs_cache: str, gcs_env: Any, tmp_path: Path
) -> None:
    archive = gcs_helpers.make_synthetic_archive(
        Path(os.environ.get("TFHUB_TEST_MODELS", tmp_path)) / "pull_big" / "model.tar.gz", big_bytes=96 * MiB
    )
    handle = str(archive)
    shared: Any = stage(handle, gcs_cache)
    local = tmp_path / "local"
    key = cache_key(handle)

    proc = cli("pull", handle, "--from", gcs_cache, "--cache-dir", str(local), env={"TFHUB_DOWNLOAD_CONNECTIONS": "2"})
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".tmp") and any(p.rglob("*.data-*")) for p in _children(local)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    assert lookup_entry(LocalStorage(str(local)), handle) is None  # nothing that looks complete
    assert not (local / f"{key}.meta.json").exists() and not (local / key).exists()

    finished = tfhub_cache.pull(handle, source=gcs_cache, cache_dir=str(local))

    assert finished["revision"] == shared["revision"]
    assert verify(LocalStorage(str(local)))["entries"][0]["status"] == "ok"
    assert sorted(p.name for p in local.iterdir()) == sorted(
        [key, f"{key}.descriptor.txt", f"{key}.meta.json", f"{key}.revisions"]
    )


def _children(path: Path) -> list[Path]:
    return list(path.iterdir()) if path.exists() else []


def test_pull_of_a_named_revision_and_of_an_unknown_one(
    hub: Any, handle_of: Any, model_archives: dict[str, Path], gcs_cache: str, tmp_path: Path
) -> None:
    handle = handle_of("demo_v1")
    first: Any = stage(handle, gcs_cache)
    hub.add_model("/google/demo_v1/1", model_archives["demo_v2"])  # the model changes upstream
    second = stage(handle, gcs_cache, refresh="always")
    assert second["revision"] != first["revision"]
    local = str(tmp_path / "local")

    named = tfhub_cache.pull(handle, source=gcs_cache, cache_dir=local, revision=first["revision"])
    assert named["revision"] == first["revision"]
    assert hub_load_y(handle, local) == expected_output([[1.0, 1.0, 1.0]], scale=2.0, offset=1.0)
    current = tfhub_cache.pull(handle, source=gcs_cache, cache_dir=local)
    assert current["revision"] == second["revision"] and current["refreshed"] is True
    assert hub_load_y(handle, local) == expected_output([[1.0, 1.0, 1.0]], scale=2.0, offset=5.0)
    with pytest.raises(CacheError, match=r"Revision 'feedfacecafe'.*does not exist"):
        tfhub_cache.pull(handle, source=gcs_cache, cache_dir=local, revision="feedfacecafe")
    with pytest.raises(CacheError, match="is not staged in"):
        tfhub_cache.pull(handle_of("small_b"), source=gcs_cache, cache_dir=local)


def test_cli_pull_json_is_the_staged_record_plus_pulled_from(
    hub: Any, handle_of: Any, gcs_cache: str, tmp_path: Path
) -> None:
    handle = handle_of("small_a")
    shared: Any = stage(handle, gcs_cache)
    local = str(tmp_path / "local")
    proc = cli("pull", handle, "--from", gcs_cache, "--cache-dir", local, "--json")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    record = json.loads(out)

    assert set(record) == {*RESULT_KEYS, "pulled_from"}
    assert record["revision"] == shared["revision"] and record["cache_dir"] == local
