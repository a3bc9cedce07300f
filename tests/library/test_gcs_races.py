"""Races on one ``gs://`` cache at real sizes and at mapped-task fan-out, with real processes.

* 8 stagers of one handle whose model has variables shards of 10 MB and 9 MB (above the single-
  request upload size: streamed resumable uploads) and 64 MB (a parallel composite upload of four
  parts), from a paced hub so that every stager is up while the winner still downloads;
* 32 stagers over 8 handles (4 per handle), as a mapped task with repeated handles would run.

Each time: one archive download per handle, one path per handle, every entry complete and exactly
its manifest, and no lock, temp or composite-part object left in the bucket.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
from pathlib import Path
from typing import Any

from gcs_helpers import BUCKET, all_objects, assert_complete, leftovers, result_of, run_stage_subprocess, wait_ready

from tfhub_cache.handles import cache_key
from tfhub_cache.storage.gcs import GCSStorage
from tfhub_cache.testing.models import PLACEHOLDER_SAVED_MODEL

MB = 1_000_000
MiB = 1 << 20
SHARDS = (10 * MB, 64 * MiB, 9 * MB)


def make_sharded_archive(path: Path, shards: tuple[int, ...] = SHARDS, seed: int = 7) -> Path:
    """A SavedModel-shaped ``.tar.gz`` with incompressible variables shards of the given sizes (built once)."""
    if path.exists():
        return path
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            add(tar, "saved_model.pb", PLACEHOLDER_SAVED_MODEL)
            add(tar, "variables/variables.index", rng.randbytes(4096))
            for i, size in enumerate(shards):
                add(tar, f"variables/variables.data-{i:05d}-of-{len(shards):05d}", rng.randbytes(size))
    os.replace(tmp, path)
    return path


def run_together(jobs: list[tuple[str, str]], env: dict[str, str], go: Path) -> list[dict[str, Any]]:
    """Start one stager process per ``(handle, cache)``, release them at once, return their results."""
    procs = [run_stage_subprocess(handle, cache, env, lock_timeout=60, wait_for=go) for handle, cache in jobs]
    try:
        for proc in procs:
            wait_ready(proc, timeout=300)
        go.touch()
        return [result_of(proc, timeout=600) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def assert_clean(storage: GCSStorage) -> None:
    assert leftovers(storage) == []
    assert [n for n in all_objects(storage) if "composite" in n or ".tmp" in n] == []


def test_eight_stagers_race_on_a_model_with_large_shards(
    hub: Any, gcs_cache: str, gcs_env: dict[str, str], model_archives: dict[str, Path], tmp_path: Path
) -> None:
    archive = make_sharded_archive(model_archives["demo_v1"].parents[1] / "gcs_shards" / "model.tar.gz")
    path = "/google/sharded/1"
    hub.add_model(path, archive)
    hub.set_faults(path, delay_s=1.0, rate_bytes_per_s=40 * MB)  # ~2 s of body: everyone is waiting by then
    handle = f"{hub.url}{path}"

    results = run_together([(handle, gcs_cache)] * 8, gcs_env, tmp_path / "go")

    assert hub.stats()["models"][path]["archive_full"] == 1
    assert sum(r["downloaded"] for r in results) == 1
    [path] = {r["path"] for r in results}  # one immutable revision for every stager
    assert path.startswith(f"{gcs_cache}/{cache_key(handle)}.revisions/")
    assert len({r["sha256"] for r in results}) == 1
    storage = GCSStorage(gcs_cache)
    meta = assert_complete(storage, handle)
    sizes = sorted(rec["size"] for rel, rec in meta["manifest"].items() if ".data-" in rel)
    assert sizes == sorted(SHARDS)
    assert_clean(storage)


def test_thirty_two_stagers_over_eight_handles(
    hub: Any, gcs_cache: str, gcs_env: dict[str, str], model_archives: dict[str, Path], tmp_path: Path
) -> None:
    paths = [f"/fanout/model{i}/1" for i in range(8)]
    for i, path in enumerate(paths):
        hub.add_model(path, model_archives["medium" if i % 2 else "small_a"])
        hub.set_faults(path, delay_s=1.5)  # every handle's winner is still downloading when its peers start
    handles = [f"{hub.url}{path}" for path in paths]

    results = run_together([(h, gcs_cache) for h in handles for _ in range(4)], gcs_env, tmp_path / "go")

    stats = hub.stats()["models"]
    assert {path: stats[path]["archive_full"] for path in paths} == dict.fromkeys(paths, 1)
    storage = GCSStorage(gcs_cache)
    for handle in handles:
        mine = [r for r in results if r["handle"] == handle]
        assert len(mine) == 4 and sum(r["downloaded"] for r in mine) == 1
        [path] = {r["path"] for r in mine}
        assert path.startswith(f"{gcs_cache}/{cache_key(handle)}.revisions/")
        assert_complete(storage, handle)
    assert_clean(storage)
    assert BUCKET in gcs_cache
