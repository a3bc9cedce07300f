"""Issue 6: staging survives what real networks, disks, archives and workers do to it.

Every fault is real: the loopback hub cuts, stalls, throttles and fails responses on the wire;
stagers are separate processes killed with SIGKILL; the full disk is a 2 MB tmpfs (or
RLIMIT_FSIZE); hostile archives are built byte by byte. No mocks, and no timed assertions (how
fast staging is belongs to benchmarks/): "within seconds" is enforced by giving the lock a grace
period far longer than the test's own timeout, so only the dead-PID rule can let it pass.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google_crc32c
import pytest

from airflow_provider_tfhub.core.errors import (
    ArchiveError,
    ChecksumMismatchError,
    DiskFullError,
    DownloadError,
)
from airflow_provider_tfhub.core.handles import cache_key
from airflow_provider_tfhub.core.staging import stage
from airflow_provider_tfhub.core.transfer import RetriesExhausted, RetryPolicy
from airflow_provider_tfhub.testing.models import make_malicious_archive

PY = sys.executable
FAST = RetryPolicy(attempts=5, backoff=0.01, max_backoff=0.05)
MEDIUM = "/google/medium/1"  # ~8 MB of random float32 weights: big enough to cut, stall and kill mid-way


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def archive_records(hub: Any, path: str = MEDIUM) -> list[dict[str, Any]]:
    """Request records of the archive hop (the storage listener's /storage/... URL) of ``path``."""
    return [r for r in hub.stats()["recent"] if r["path"].startswith("/storage" + path)]


def entry_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def assert_nothing_left(cache: Path) -> None:
    """A failed staging leaves no model dir, metadata, temp dir or lock behind."""
    left = [n for n in entry_files(cache) if not n.endswith(".descriptor.txt")]
    assert left == [], left


def manifest_of_dir(model_dir: Path) -> dict[str, dict[str, Any]]:
    """{relpath: {size, crc32c}} of a directory tree, in the meta.json manifest's format."""
    out = {}
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            crc = google_crc32c.Checksum(path.read_bytes())
            rel = path.relative_to(model_dir).as_posix()
            out[rel] = {"size": path.stat().st_size, "crc32c": base64.b64encode(crc.digest()).decode()}
    return out


def assert_entry_complete(cache: Path, handle: str, reference: dict[str, dict[str, Any]]) -> None:
    """The staged entry has metadata and exactly the reference files, byte for byte (CRC32C)."""
    key = cache_key(handle)
    meta = json.loads((cache / f"{key}.meta.json").read_text())
    assert meta["manifest"] == reference
    assert manifest_of_dir(cache / key) == reference  # tensorflow_hub's view
    assert manifest_of_dir(cache / f"{key}.revisions" / meta["revision"]) == reference


@pytest.fixture(scope="module")
def medium_reference(model_archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The medium model's files as a plain tarfile extraction sees them (independent of our extractor)."""
    target = tmp_path_factory.mktemp("medium-reference")
    with tarfile.open(model_archives["medium"]) as tar:
        tar.extractall(target, filter="data")
    return manifest_of_dir(target)


# -- transient failures: retried with backoff and jitter, bounded ----------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 408])
def test_transient_statuses_are_retried_then_the_model_is_staged(
    hub: Any, handle_of: Any, tmp_path: Path, model_archives: dict[str, Path], status: int
) -> None:
    hub.set_faults(MEDIUM, fail_times=2, fail_status=status)
    result = stage(handle_of("medium"), str(tmp_path), retry=FAST)
    assert result["downloaded"] and result["sha256"] == sha256_of(model_archives["medium"])
    statuses = [r["status"] for r in archive_records(hub)]
    assert statuses == [status, status, 200]


def test_failures_of_the_first_hop_are_retried_too(hub: Any, handle_of: Any, tmp_path: Path) -> None:
    hub.set_faults(MEDIUM, fail_times=2, fail_status=503, fail_on="compressed")
    assert stage(handle_of("medium"), str(tmp_path), retry=FAST)["downloaded"]
    first_hop = [r["status"] for r in hub.stats()["recent"] if r["path"] == MEDIUM]
    assert first_hop == [503, 503, 302]


def test_retry_after_is_honoured(hub: Any, handle_of: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hub.set_faults(MEDIUM, fail_times=1, fail_status=429, retry_after=0.3)
    with caplog.at_level(logging.WARNING, logger="airflow_provider_tfhub"):
        stage(handle_of("medium"), str(tmp_path), retry=FAST)
    assert "answered HTTP 429; retrying in 0.3s" in caplog.text


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    policy = RetryPolicy(attempts=8, backoff=0.5, max_backoff=4.0)
    samples = {n: [policy.delay(n) for _ in range(400)] for n in range(6)}
    for n, values in samples.items():
        ceiling = min(4.0, 0.5 * 2**n)
        assert all(0 <= v <= ceiling for v in values)
        assert max(values) > 0.8 * ceiling  # the whole interval is used...
        assert len({round(v, 6) for v in values}) > 300  # ...at random: no lockstep between workers
    assert max(samples[5]) <= 4.0 < 0.5 * 2**5  # capped


def test_attempts_are_bounded_by_the_environment_and_do_not_multiply(
    hub: Any, handle_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TFHUB_DOWNLOAD_RETRIES", "3")
    assert RetryPolicy.from_env().attempts == 3
    hub.set_faults(MEDIUM, fail_times=-1, fail_status=503)
    with pytest.raises(RetriesExhausted, match="HTTP 503") as info:
        stage(handle_of("medium"), str(tmp_path))  # the policy comes from the environment
    assert not info.value.permanent  # Airflow's own task retries may still help later
    assert [r["status"] for r in archive_records(hub)] == [503, 503, 503]
    assert_nothing_left(tmp_path)


def test_unreachable_host_is_retried_then_reported(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match="after 3 attempts") as info:
        stage(f"http://127.0.0.1:{port}/google/demo/1", str(tmp_path), retry=RetryPolicy(attempts=3, backoff=0.01))
    assert not info.value.permanent


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_client_errors_are_permanent_and_sent_once(hub: Any, handle_of: Any, tmp_path: Path, status: int) -> None:
    hub.set_faults(MEDIUM, fail_times=-1, fail_status=status)
    with pytest.raises(DownloadError, match=f"HTTP {status}") as info:
        stage(handle_of("medium"), str(tmp_path), retry=FAST)
    assert info.value.permanent and info.value.status == status  # the operator fails without Airflow retries
    assert len(archive_records(hub)) == 1
    assert_nothing_left(tmp_path)


# -- cut and stalled bodies: resumed with Range + If-Range, else restarted --------------------------------


def test_cut_download_resumes_with_range_and_if_range(
    hub: Any, handle_of: Any, tmp_path: Path, model_archives: dict[str, Path], medium_reference: dict[str, Any]
) -> None:
    size = model_archives["medium"].stat().st_size
    hub.set_faults(MEDIUM, cut_after_bytes=size // 3, cut_times=2)
    result = stage(handle_of("medium"), str(tmp_path), retry=FAST, sha256=sha256_of(model_archives["medium"]))
    records = archive_records(hub)
    assert [r["status"] for r in records] == [200, 206, 206]
    assert "Range" not in records[0]["headers"]  # the first request is a plain GET
    for record in records[1:]:
        assert record["headers"]["Range"].startswith("bytes=") and record["headers"]["Range"].endswith("-")
        assert record["headers"]["If-Range"].startswith('"')  # the strong ETag of the first response
    assert int(records[1]["headers"]["Range"][6:-1]) == size // 3
    assert hub.stats()["models"][MEDIUM]["bytes_sent"] == size  # resumed: no byte was sent twice
    assert result["archive_bytes"] == size  # the in-stream hash covered the resumed stream: pin matched
    assert_entry_complete(tmp_path, handle_of("medium"), medium_reference)


def test_cut_download_restarts_when_the_server_cannot_resume(
    hub: Any, handle_of: Any, tmp_path: Path, model_archives: dict[str, Path], medium_reference: dict[str, Any]
) -> None:
    size = model_archives["medium"].stat().st_size
    hub.set_faults(MEDIUM, cut_after_bytes=size // 2, cut_times=1, no_range=True)
    result = stage(handle_of("medium"), str(tmp_path), retry=FAST)
    records = archive_records(hub)
    assert [r["status"] for r in records] == [200, 200]
    assert all("Range" not in r["headers"] for r in records)
    assert result["sha256"] == sha256_of(model_archives["medium"])
    assert_entry_complete(tmp_path, handle_of("medium"), medium_reference)
    assert [n for n in entry_files(tmp_path) if n.endswith((".tmp", ".lock"))] == []


def test_an_archive_replaced_between_cut_and_resume_is_restarted_not_mixed(
    hub: Any, handle_of: Any, tmp_path: Path, model_archives: dict[str, Path]
) -> None:
    """If-Range makes the server send the *new* archive whole (200); mixing old and new bytes is impossible."""
    size = model_archives["medium"].stat().st_size
    hub.set_faults(MEDIUM, cut_after_bytes=size // 2, cut_times=1, rate_bytes_per_s=8 * size)

    def replace_once_the_download_started() -> None:
        for _ in range(500):
            if archive_records(hub):
                hub.add_model(MEDIUM, model_archives["demo_v2"])
                return
            time.sleep(0.005)

    swapper = threading.Thread(target=replace_once_the_download_started)
    swapper.start()
    result = stage(handle_of("medium"), str(tmp_path), retry=RetryPolicy(attempts=5, backoff=0.2, max_backoff=0.3))
    swapper.join()
    records = archive_records(hub)
    assert records[1]["headers"].get("If-Range") and records[1]["status"] == 200  # validator failed: full body
    assert result["sha256"] == sha256_of(model_archives["demo_v2"])


def test_stalled_body_times_out_and_resumes(
    hub: Any,
    handle_of: Any,
    tmp_path: Path,
    model_archives: dict[str, Path],
    medium_reference: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    size = model_archives["medium"].stat().st_size
    monkeypatch.setenv("TFHUB_HTTP_TIMEOUT", "5,0.5")  # connect 5 s, read 0.5 s
    hub.set_faults(MEDIUM, stall_after_bytes=size * 2 // 3, stall_s=3.0)
    stage(handle_of("medium"), str(tmp_path), retry=FAST)
    records = archive_records(hub)
    assert [r["status"] for r in records] == [200, 206]
    # resumed from the last byte it really received (a chunk in flight at the timeout is read again)
    assert 0 < int(records[1]["headers"]["Range"][6:-1]) <= size * 2 // 3
    assert_entry_complete(tmp_path, handle_of("medium"), medium_reference)


def test_bad_timeout_setting_names_the_variable(
    hub: Any, handle_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TFHUB_HTTP_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="TFHUB_HTTP_TIMEOUT='soon'"):
        stage(handle_of("medium"), str(tmp_path))


# -- checksum pins -----------------------------------------------------------------------------------------


def test_sha256_pin_mismatch_leaves_nothing(hub: Any, handle_of: Any, tmp_path: Path) -> None:
    with pytest.raises(ChecksumMismatchError, match="expected " + "0" * 64):
        stage(handle_of("medium"), str(tmp_path), sha256="0" * 64)
    assert_nothing_left(tmp_path)
    assert hub.stats()["models"][MEDIUM]["archive_full"] == 1  # verified in-stream: the archive was read once


# -- SIGKILL at random points --------------------------------------------------------------------------------

_KILLED_STAGER = textwrap.dedent(
    """
    import sys
    from airflow_provider_tfhub.core.staging import stage
    print("GO", flush=True)
    stage(sys.argv[1], sys.argv[2], lock_timeout=3600)
    print("DONE", flush=True)
    """
)


def _dir_is_complete_model(model_dir: Path, reference: dict[str, Any]) -> bool:
    return manifest_of_dir(model_dir) == reference


def test_sigkilled_stagers_never_leave_a_partial_model_and_are_cleaned_up_at_once(
    hub: Any,
    handle_of: Any,
    tmp_path: Path,
    model_archives: dict[str, Path],
    medium_reference: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    size = model_archives["medium"].stat().st_size
    hub.set_faults(MEDIUM, rate_bytes_per_s=size * 3)  # ~0.3 s per download: kills land all along it
    handle = handle_of("medium")
    key = cache_key(handle)
    rng = random.Random(6)
    states: list[tuple[bool, bool, bool]] = []
    for trial in range(20):
        cache = tmp_path / f"trial{trial}"
        proc = subprocess.Popen([PY, "-c", _KILLED_STAGER, handle, str(cache)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "GO"
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        names = entry_files(cache)
        had = (any(n.endswith(".tmp") for n in names), f"{key}.lock" in names, key in names)
        states.append(had)
        if key in names:  # never a model dir without complete content (metadata may trail the rename)
            assert _dir_is_complete_model(cache / key, medium_reference), (trial, names)
            if f"{key}.meta.json" in names:
                assert json.loads((cache / f"{key}.meta.json").read_text())["manifest"] == medium_reference
        # The lock's grace period is an hour: only "same host, dead PID" can let the next stager in.
        with caplog.at_level(logging.INFO, logger="airflow_provider_tfhub"):
            result = stage(handle, str(cache), lock_timeout=3600)
        assert result["path"] == os.path.realpath(cache / key)  # the view names the current revision
        assert_entry_complete(cache, handle, medium_reference)
        revisions = sorted(p.name for p in (cache / f"{key}.revisions").iterdir())
        assert revisions == [result["revision"], f"{result['revision']}.json"], (trial, revisions)
        leftovers = [n for n in entry_files(cache) if n.endswith((".tmp", ".lock"))]
        assert leftovers == [], (trial, leftovers)
        if had[1]:
            assert f"its process {proc.pid} on this host is gone" in caplog.text
        caplog.clear()
        shutil.rmtree(cache)
    killed_mid_download = sum(1 for tmp, lock, _ in states if tmp or lock)
    assert killed_mid_download >= 5, states  # the kills did land while stagers held the lock


# -- disk full -------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs here ({done.stderr.decode().strip()}); the RLIMIT_FSIZE test covers it")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_during_extraction_is_a_clear_error_and_leaves_no_temp(
    hub: Any, handle_of: Any, tiny_tmpfs: Path
) -> None:
    cache = tiny_tmpfs / "cache"
    with pytest.raises(DiskFullError, match="No space left while writing") as info:
        stage(handle_of("medium"), str(cache), retry=FAST)
    assert str(cache) in str(info.value)
    assert_nothing_left(cache)
    assert hub.stats()["models"][MEDIUM]["archive_full"] == 1  # a full disk is not retried


_FSIZE_STAGER = textwrap.dedent(
    """
    import json, resource, signal, sys
    from airflow_provider_tfhub.core.errors import DiskFullError
    from airflow_provider_tfhub.core.staging import stage
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))
    try:
        stage(sys.argv[1], sys.argv[2])
    except DiskFullError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc), "permanent": exc.permanent}))
    """
)


def test_file_size_limit_during_extraction_is_a_clear_error_and_leaves_no_temp(
    hub: Any, handle_of: Any, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    out = subprocess.run(
        [PY, "-c", _FSIZE_STAGER, handle_of("medium"), str(cache)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["error"] == "DiskFullError" and str(cache) in report["message"]
    assert_nothing_left(cache)


# -- hostile archives -------------------------------------------------------------------------------------------

_MEMBER_NAMED = {
    "traversal": "../evil.txt",
    "traversal_nested": "./variables/../../evil.txt",
    "absolute": "/tmp/evil-",
    "symlink": "./evil_link",
    "hardlink": "./evil_hardlink",
    "device": "./evil_device",
    "bomb": "./variables/variables.data-00000-of-00001",
    "no_model": "no saved_model.pb",
}


@pytest.mark.parametrize("kind", list(_MEMBER_NAMED))
def test_hostile_archives_are_rejected_naming_the_member_and_write_nothing_outside(
    hub: Any, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_malicious_archive(tmp_path / "archives" / f"{kind}.tar.gz", kind)
    monkeypatch.setenv("TFHUB_MAX_EXTRACTED_BYTES", str(1 << 20))  # the bomb declares 2 GiB
    handle = hub.add_archive(f"{kind}.tar.gz", archive)
    workdir = tmp_path / "work"
    cache = workdir / "cache"
    before = set(os.listdir("/tmp"))
    with pytest.raises(ArchiveError) as info:
        stage(handle, str(cache), retry=FAST)
    assert _MEMBER_NAMED[kind] in str(info.value)
    assert_nothing_left(cache)
    assert sorted(p.name for p in workdir.iterdir()) == ["cache"]  # nothing next to the cache either
    assert not [n for n in set(os.listdir("/tmp")) - before if n.startswith("evil")]
    if kind == "absolute":
        with tarfile.open(archive) as tar:
            absolute = next(m.name for m in tar.getmembers() if m.name.startswith("/"))
        assert absolute in str(info.value) and not Path(absolute).exists()
    assert len([r for r in hub.stats()["recent"] if r["path"].startswith("/archives/")]) == 1  # not retried


def test_bomb_limit_as_an_argument(hub: Any, tmp_path: Path) -> None:
    archive = make_malicious_archive(tmp_path / "bomb.tar.gz", "bomb", bomb_size=64 << 20)
    handle = hub.add_archive("bomb-arg.tar.gz", archive)
    with pytest.raises(ArchiveError, match="past the limit of 1000000 extracted bytes"):
        stage(handle, str(tmp_path / "cache"), max_extracted_bytes=1_000_000)
    assert_nothing_left(tmp_path / "cache")
    # the same archive within a generous limit is merely "not a loadable model", but it extracts
    result = stage(handle, str(tmp_path / "cache2"), max_extracted_bytes=128 << 20)
    assert result["bytes"] == (64 << 20) + 2


# -- credentials ---------------------------------------------------------------------------------------------

TOKEN = "hf_SECRET-token-6f1d2c"  # distinctive, so any leak is found by a plain substring search


def test_token_goes_only_to_the_hub_host_and_is_never_recorded(
    hub: Any,
    handle_of: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    hub.set_faults(MEDIUM, fail_times=1, fail_status=503)  # a retry, so retry logs are covered too
    cache = tmp_path / "cache"
    with caplog.at_level(logging.DEBUG):
        result = stage(handle_of("medium"), str(cache), token=TOKEN, retry=FAST)
        with pytest.raises(DownloadError) as missing:
            stage(f"{hub.url}/google/absent/1", str(cache), token=TOKEN, retry=FAST)
    records = hub.stats()["recent"]
    main = [r for r in records if r["listener"] == "main"]
    storage = [r for r in records if r["listener"] == "storage"]
    assert main and storage
    assert all(r["headers"].get("Authorization") == f"Bearer {TOKEN}" for r in main)
    assert all("Authorization" not in r["headers"] for r in storage)  # the redirect target is another origin
    captured = capfd.readouterr()
    for text in (caplog.text, captured.out, captured.err, json.dumps(result), str(missing.value)):
        assert TOKEN not in text
    for path in cache.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_lock_of_a_reused_pid_or_an_empty_lock_is_stale_at_once(
    hub: Any, handle_of: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The PID in a dead stager's lock may belong to a newer process by now; an empty lock has no holder."""
    handle = handle_of("small_a")
    key = cache_key(handle)
    tmp_path.mkdir(exist_ok=True)
    lock = tmp_path / f"{key}.lock"
    sleeper = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{socket.gethostname()}.{sleeper.pid}.deadbeef")  # alive, but started after the lock
        an_hour_ago = time.time() - 3600
        os.utime(lock, (an_hour_ago, an_hour_ago))
        with caplog.at_level(logging.WARNING, logger="airflow_provider_tfhub"):
            assert stage(handle, str(tmp_path), lock_timeout=7200)["downloaded"]
        assert f"its process {sleeper.pid} on this host is gone" in caplog.text
    finally:
        sleeper.kill()
        sleeper.wait()
    other = tmp_path / "other"
    other.mkdir()
    empty = other / f"{key}.lock"
    empty.write_bytes(b"")
    os.utime(empty, (time.time() - 60, time.time() - 60))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="airflow_provider_tfhub"):
        assert stage(handle, str(other), lock_timeout=7200)["downloaded"]
    assert "it is empty" in caplog.text
    assert not empty.exists()
