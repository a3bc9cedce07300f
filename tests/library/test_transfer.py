"""``core/transfer.py``: fetching an archive over a real network that fails, cuts and stalls.

Every fault is real: the loopback hub fails, cuts, stalls and throttles responses on the wire.
Transient failures are retried with backoff and full jitter, bounded; client errors are permanent
and sent once; a cut or stalled body is resumed with ``Range`` + ``If-Range`` (else restarted);
the stream hashes what it delivers, so a sha256 pin covers a resumed download too. No mocks and
no timed assertions (how fast it is belongs to benchmarks/).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from stage_helpers import (
    FAST,
    MEDIUM,
    archive_records,
    assert_entry_complete,
    assert_nothing_left,
    entry_files,
    sha256_of,
)

from tfhub_cache.cache.staging import stage
from tfhub_cache.errors import ChecksumMismatchError, DownloadError, RetriesExhausted
from tfhub_cache.retry import RetryPolicy

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
    with caplog.at_level(logging.WARNING, logger="tfhub_cache"):
        stage(handle_of("medium"), str(tmp_path), retry=FAST)
    assert "answered HTTP 429; retrying up to 4 more times, next in 0.3s" in caplog.text


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
    with pytest.raises(ValueError, match="Environment variable `TFHUB_HTTP_TIMEOUT` is 'soon'"):
        stage(handle_of("medium"), str(tmp_path))


# -- checksum pins -----------------------------------------------------------------------------------------


def test_sha256_pin_mismatch_leaves_nothing(hub: Any, handle_of: Any, tmp_path: Path) -> None:
    with pytest.raises(ChecksumMismatchError, match="expected " + "0" * 64):
        stage(handle_of("medium"), str(tmp_path), sha256="0" * 64)
    assert_nothing_left(tmp_path)
    assert hub.stats()["models"][MEDIUM]["archive_full"] == 1  # verified in-stream: the archive was read once
