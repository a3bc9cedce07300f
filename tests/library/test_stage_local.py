"""Issue 2 acceptance: staging into a local cache that tensorflow_hub itself uses, and back.

Everything here runs against the real loopback hub; tensorflow_hub and TensorFlow run in
subprocesses so that this process can keep proving that staging never imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from stage_helpers import run_py

from tfhub_cache.cache.staging import RESULT_KEYS, is_cached, stage
from tfhub_cache.errors import (
    ArchiveError,
    CacheError,
    ChecksumMismatchError,
    DownloadError,
    InvalidHandleError,
)
from tfhub_cache.handles import cache_key
from tfhub_cache.testing.hub import HubServer
from tfhub_cache.testing.models import make_malicious_archive

PY = sys.executable


def leftovers(cache: str | Path) -> list[str]:
    """Entries that must never survive a failed staging."""
    root = Path(cache)
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if p.name.endswith((".tmp", ".lock")) or p.is_dir())


def archive_count(hub: Any, name: str) -> int:
    return int(hub.stats()["models"].get(f"/google/{name}/1", {}).get("archive_full", 0))


def test_stage_then_hit_without_requests(hub: Any, handle_of: Any, cache_dir: str) -> None:
    handle = handle_of("demo_v1")
    first = stage(handle, cache_dir)
    assert set(RESULT_KEYS) <= set(first)
    key = cache_key(handle)
    assert first["path"] is not None and first["revision"] is not None
    assert first["cache_key"] == key and first["path"] == os.path.join(cache_dir, f"{key}.revisions", first["revision"])
    assert os.path.realpath(os.path.join(cache_dir, key)) == first["path"]  # where tensorflow_hub looks
    assert first["files"] is not None and first["bytes"] is not None
    assert first["downloaded"] is True and first["files"] >= 2 and first["bytes"] > 0
    assert first["sha256"] is not None and first["source_url"] is not None
    assert (
        len(first["sha256"]) == 64
        and first["etag"]
        and first["source_url"].endswith("/storage/google/demo_v1/1.tar.gz")
    )
    model = Path(first["path"])
    assert (model / "saved_model.pb").is_file() and (model / "variables").is_dir()
    descriptor = (Path(cache_dir) / f"{key}.descriptor.txt").read_text().split("\n")
    assert descriptor[0] == f"Module: {handle}" and len(descriptor) == 3
    meta = json.loads((Path(cache_dir) / f"{key}.meta.json").read_text())
    assert meta["sha256"] == first["sha256"] and set(meta["manifest"]) >= {"saved_model.pb"}
    assert not (Path(cache_dir) / f"{key}.lock").exists()
    assert archive_count(hub, "demo_v1") == 1

    hub.reset_stats()
    second = stage(handle, cache_dir)
    assert second["downloaded"] is False and second["path"] == first["path"] and second["sha256"] == first["sha256"]
    assert hub.stats()["requests"] == 0
    assert is_cached(handle, cache_dir)
    assert not is_cached(handle_of("demo_v2"), cache_dir)


def test_tensorflow_hub_loads_our_cache_offline(model_archives: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with HubServer() as own_hub:  # its own server, so stopping it cannot disturb other tests
        handle = own_hub.add_model("/google/demo_v1/1", model_archives["demo_v1"])
        staged = stage(handle, str(cache))
    # The hub is gone: tensorflow_hub can only succeed by finding our staged copy.
    out = run_py(
        f"""
        import json, tensorflow as tf, tensorflow_hub as hub
        m = hub.load({handle!r})
        y = m.signatures["serving_default"](x=tf.zeros([2, 3]))["y"].numpy().tolist()
        print(json.dumps({{"path": hub.resolve({handle!r}), "y": y}}))
        """,
        env={"TFHUB_CACHE_DIR": str(cache)},
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert os.path.realpath(result["path"]) == staged["path"]
    assert result["y"] == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]  # zeros * 2 + offset 1


def test_cache_filled_by_hub_resolve_is_a_hit(hub: Any, handle_of: Any, cache_dir: str) -> None:
    handle = handle_of("small_a")
    path = (
        run_py(f"import tensorflow_hub as hub; print(hub.resolve({handle!r}))", env={"TFHUB_CACHE_DIR": cache_dir})
        .strip()
        .splitlines()[-1]
    )
    assert archive_count(hub, "small_a") == 1
    hub.reset_stats()
    result = stage(handle, cache_dir)
    assert result["downloaded"] is False and result["path"] == os.path.realpath(path)
    assert hub.stats()["requests"] == 0  # no request reached the hub
    assert stage(handle, cache_dir)["files"] == result["files"]


def test_two_processes_one_download(hub: Any, handle_of: Any, cache_dir: str) -> None:
    handle = handle_of("medium")
    hub.set_faults("/google/medium/1", rate_bytes_per_s=4_000_000)  # ~2 s body: the stagers overlap
    code = f"""
        import json
        from tfhub_cache.cache.staging import stage
        r = stage({handle!r}, {cache_dir!r})
        print(json.dumps({{"path": r["path"], "downloaded": r["downloaded"]}}))
    """
    procs = [
        subprocess.Popen([PY, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert archive_count(hub, "medium") == 1
    assert results[0]["path"] == results[1]["path"]
    assert sorted(r["downloaded"] for r in results) == [False, True]
    assert leftovers(cache_dir) == [cache_key(handle), f"{cache_key(handle)}.revisions"]


def test_staging_never_imports_tensorflow(hub: Any, handle_of: Any, cache_dir: str) -> None:
    out = run_py(
        f"""
        import sys
        from tfhub_cache.cache.staging import stage
        import tfhub_cache.cli
        stage({handle_of("small_b")!r}, {cache_dir!r})
        stage({handle_of("small_b")!r}, {cache_dir!r})
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_hub", "airflow")))
        """
    )
    assert out.strip().splitlines()[-1] == "[]"
    if "tensorflow" not in sys.modules:  # (a test that loads a model in this process may have imported it)
        stage(handle_of("small_b"), cache_dir)
        assert "tensorflow" not in sys.modules  # nor in this pytest process


# -- bad inputs: a clear error and nothing left behind --------------------------------------------


def test_unknown_scheme(cache_dir: str) -> None:
    with pytest.raises(InvalidHandleError, match="unsupported scheme 'ftp://'"):
        stage("ftp://example.com/model.tar.gz", cache_dir)
    assert leftovers(cache_dir) == []


def test_404(hub: Any, cache_dir: str) -> None:
    with pytest.raises(DownloadError) as err:
        stage(f"{hub.url}/google/missing/1", cache_dir)
    assert err.value.status == 404 and err.value.permanent and "check publisher, name and version" in str(err.value)
    assert leftovers(cache_dir) == []


def test_html_page_instead_of_archive(hub: Any, handle_of: Any, cache_dir: str) -> None:
    hub.set_faults("/google/demo_v1/1", html_instead=True)
    with pytest.raises(DownloadError, match="HTML page instead of a model archive"):
        stage(handle_of("demo_v1"), cache_dir)
    assert leftovers(cache_dir) == []


def test_plain_url_of_a_web_page(hub: Any, cache_dir: str, tmp_path: Path) -> None:
    page = tmp_path / "page.tar.gz"
    page.write_bytes(b"<!DOCTYPE html><html><body>login</body></html>")
    url = hub.add_archive("page.tar.gz", page)
    with pytest.raises(ArchiveError, match="web page"):
        stage(url, cache_dir)
    assert leftovers(cache_dir) == []


def test_truncated_archive(hub: Any, handle_of: Any, cache_dir: str, model_archives: dict[str, Path]) -> None:
    hub.set_faults("/google/medium/1", truncate_to=model_archives["medium"].stat().st_size // 2)
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        stage(handle_of("medium"), cache_dir)
    assert leftovers(cache_dir) == []


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink", "no_model"])
def test_unsafe_or_non_model_archive(hub: Any, cache_dir: str, tmp_path: Path, kind: str) -> None:
    archive = make_malicious_archive(tmp_path / f"{kind}.tar.gz", kind)
    url = hub.add_archive(f"{kind}.tar.gz", archive)
    with pytest.raises(ArchiveError) as err:
        stage(url, cache_dir)
    message = str(err.value)
    assert {
        "traversal": "'..'",
        "absolute": "absolute path",
        "symlink": "symbolic link",
        "no_model": "no saved_model.pb",
    }[kind] in message
    assert leftovers(cache_dir) == []
    assert not (tmp_path / "evil.txt").exists() and not Path(cache_dir).parent.joinpath("evil.txt").exists()


def test_checksum_mismatch(hub: Any, handle_of: Any, cache_dir: str) -> None:
    with pytest.raises(ChecksumMismatchError, match="expected 0000"):
        stage(handle_of("demo_v1"), cache_dir, sha256="0" * 64)
    assert leftovers(cache_dir) == []
    good = stage(handle_of("demo_v1"), cache_dir)
    assert stage(handle_of("demo_v1"), cache_dir, sha256=good["sha256"])["downloaded"] is False


def test_unwritable_cache_dir(hub: Any, handle_of: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache's parent should be")
    with pytest.raises(CacheError, match="choose a writable cache_dir"):
        stage(handle_of("demo_v1"), str(blocker / "cache"))
    assert hub.stats()["requests"] == 0


def test_local_dir_and_archive_handles(model_archives: dict[str, Path], cache_dir: str, tmp_path: Path) -> None:
    staged = stage(str(model_archives["small_a"]), cache_dir)
    assert staged["path"] is not None
    assert staged["downloaded"] and Path(staged["path"], "saved_model.pb").is_file()
    as_dir = stage(staged["path"], cache_dir)
    assert as_dir["path"] == staged["path"] and as_dir["downloaded"] is False and as_dir["cache_key"] is None
    with pytest.raises(InvalidHandleError, match="neither a URL nor an existing directory"):
        stage(str(tmp_path / "nope"), cache_dir)


def test_broken_tensorflow_hub_leftover_is_replaced(hub: Any, handle_of: Any, cache_dir: str) -> None:
    """tensorflow_hub issue #575: a temp cleaner removed files, the dir stayed. Not a hit for us."""
    handle = handle_of("demo_v1")
    broken = Path(cache_dir, cache_key(handle), "variables")
    broken.mkdir(parents=True)
    (broken / "variables.index").write_bytes(b"stale")
    result = stage(handle, cache_dir)
    assert result["path"] is not None
    assert result["downloaded"] is True and Path(result["path"], "saved_model.pb").is_file()


def test_complete_tree_behind_a_dead_lock_is_adopted_not_redownloaded(hub: Any, handle_of: Any, cache_dir: str) -> None:
    """A tensorflow_hub stager died after its rename but before removing its lock: the tree is complete."""
    handle = handle_of("small_b")
    first = stage(handle, cache_dir)
    key = first["cache_key"]
    Path(cache_dir, f"{key}.meta.json").unlink()  # as tensorflow_hub leaves it: no metadata of ours
    dead = subprocess.run([PY, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    Path(cache_dir, f"{key}.lock").write_text(f"{socket.gethostname()}.{dead}.0123abcd")
    hub.reset_stats()
    again = stage(handle, cache_dir)
    assert again["downloaded"] is False and again["path"] == first["path"]
    assert hub.stats()["requests"] == 0
    assert not Path(cache_dir, f"{key}.lock").exists() and Path(cache_dir, f"{key}.meta.json").exists()


def test_leftover_small_write_temps_are_swept(hub: Any, handle_of: Any, cache_dir: str) -> None:
    """A stager killed inside an atomic small write leaves ``<key>.lock.tmp<hex>``; the next stager removes it."""
    handle = handle_of("small_a")
    key = cache_key(handle)
    Path(cache_dir).mkdir(parents=True)
    old = Path(cache_dir, f"{key}.lock.tmp{'a' * 32}")
    fresh = Path(cache_dir, f"{key}.meta.json.tmp{'b' * 32}")
    old.write_text("x")
    fresh.write_text("x")
    os.utime(old, (1, 1))
    stage(handle, cache_dir)
    assert not old.exists()
    assert fresh.exists()  # could be a live writer's: left for prune
