"""The ``tfhub_cache.storage.gcs`` package: its public names, and the one retry loop of its uploads.

The uploads' behaviour against GCS (streamed, resumed, composite) is covered against the emulator in
test_gcs_cache.py and test_gcs_stall.py; here the retry loop both upload kinds share is driven by a
real loopback HTTP server that answers what each case needs.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests
from google.api_core import exceptions as api_exceptions

from tfhub_cache.errors import CacheError
from tfhub_cache.retry import RetryPolicy
from tfhub_cache.storage.gcs.client_adapter import is_timeout
from tfhub_cache.storage.gcs.upload import UPLOAD_RETRY, send_with_retries


def test_the_package_names_its_backend_sink_and_object_layer() -> None:
    from tfhub_cache.storage import gcs

    for name in ("GCSObjects", "GCSStorage", "GCSTreeSink"):
        assert getattr(gcs, name).__module__.startswith("tfhub_cache.storage.gcs.")
    assert gcs.LAST_USED_KEY == "tfhub-last-used" and gcs.DEFAULT_STALL_TIMEOUT == 60.0
    assert gcs.parse_gs_url("gs://bucket/some/prefix/") == ("bucket", "some/prefix")


@dataclass(frozen=True)
class _RecordingPolicy(RetryPolicy):
    """A RetryPolicy that waits no time and records which retry it was asked about."""

    asked: list[int] = field(default_factory=list, compare=False)

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        self.asked.append(attempt)
        return 0.0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_upload_retries_are_counted_and_spaced_by_the_retry_policy() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/upload"
    policy = _RecordingPolicy(attempts=3)
    calls = 0

    def send() -> requests.Response:
        nonlocal calls
        calls += 1
        return requests.post(url, data=b"x", timeout=5)

    with pytest.raises(requests.ConnectionError):
        send_with_retries(send, what="Upload of a test part", policy=policy)
    assert calls == 3
    assert policy.asked == [0, 1]  # every wait between tries comes from the policy (its jitter)


def test_uploads_use_a_jittered_policy_of_five_tries() -> None:
    assert UPLOAD_RETRY.attempts == 5 and UPLOAD_RETRY.max_backoff == 10.0
    assert len({UPLOAD_RETRY.delay(3) for _ in range(20)}) > 1  # full jitter: not one fixed wait


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers each POST with the next status of the server's script (200: a small object resource)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status = self.server.script.pop(0)  # type: ignore[attr-defined]
        body = json.dumps({"size": "1"} if status == 200 else {"error": {"code": status, "message": "x"}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def scripted() -> Iterator[tuple[str, list[int]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.script = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/upload", server.script  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def test_a_transient_status_is_retried_and_a_permanent_one_is_not(scripted: tuple[str, list[int]]) -> None:
    url, script = scripted
    policy = _RecordingPolicy(attempts=5)

    def send() -> requests.Response:
        return requests.post(url, data=b"x", timeout=5)

    script[:] = [503, 429, 200]
    assert send_with_retries(send, what="Upload of a test part", policy=policy) == {"size": "1"}
    assert policy.asked == [0, 1]

    script[:] = [403, 200]
    with pytest.raises(api_exceptions.Forbidden):
        send_with_retries(send, what="Upload of a test part", policy=policy)
    assert script == [200]  # not sent again


def test_resume_may_finish_an_upload_without_sending_it_again() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/upload"
    calls = 0

    def send() -> requests.Response:
        nonlocal calls
        calls += 1
        return requests.put(url, data=b"x", timeout=5)

    done = send_with_retries(
        send, what="Upload of a test file", policy=_RecordingPolicy(attempts=5), resume=lambda: {"size": "1"}
    )
    assert done == {"size": "1"} and calls == 1


def test_an_upload_that_stalled_and_cannot_resume_fails_as_the_stall(caplog: pytest.LogCaptureFixture) -> None:
    """The stall is the cause a user must see ("GCS stopped answering"), not the resume it made impossible;
    the error keeps the chain that tells it was a timeout (what the storage's error message is chosen by)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True).start()
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/upload"
    calls = 0

    def send() -> requests.Response:
        nonlocal calls
        calls += 1
        # accepted, never read: the body's send times out, which requests reports as a ConnectionError whose
        # chain holds the TimeoutError (what GCS uploads on a stalled path see)
        return requests.put(url, data=bytes(64 << 20), timeout=(5, 0.2))

    def resume() -> None:
        raise CacheError("The upload broke off and cannot resume: GCS kept 0 bytes")

    try:
        with pytest.raises(requests.ConnectionError) as raised:
            send_with_retries(send, what="Upload of a test file", policy=_RecordingPolicy(attempts=5), resume=resume)
    finally:
        silent.close()
        for conn in held:
            conn.close()
    assert calls == 1  # not sent again: nothing to resume from
    assert is_timeout(raised.value) and not isinstance(raised.value.__context__, CacheError)
    assert "cannot resume after the stall: The upload broke off" in caplog.text
