"""Uploads of large files: one streamed request of a resumable session, or parts composed server side."""

from __future__ import annotations

import base64
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from tfhub_cache.errors import CacheError
from tfhub_cache.responses import is_transient
from tfhub_cache.retry import RetryPolicy
from tfhub_cache.storage.base import SinkAborted
from tfhub_cache.storage.gcs.client_adapter import http_session, is_timeout, media_upload_url
from tfhub_cache.storage.gcs.objects import GCSObjects

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

#: Retries of one upload request (a part, or a streamed file's request): RetryPolicy's full jitter,
#: so parallel uploads that failed together do not retry in lockstep.
UPLOAD_RETRY = RetryPolicy(attempts=5, backoff=0.5, max_backoff=10.0)
#: A request that stalled this many times is given up at once: GCS (or the path to it) is not
#: answering, and the lock should go to a stager that can reach it rather than wait out retries.
_MAX_STALLS = 2


class UploadingSink(Protocol):
    """What an upload needs of the sink it works for (:class:`~tfhub_cache.storage.gcs.sink.GCSTreeSink`):
    the bucket, the shared memory budget, and whether to stop."""

    storage: GCSObjects
    budget: ByteBudget

    def check(self) -> None:
        """Raise when the sink was aborted or another upload failed."""

    def is_aborted(self) -> bool: ...


def send_with_retries(
    send: Callable[[], requests.Response],
    *,
    what: str,
    policy: RetryPolicy = UPLOAD_RETRY,
    resume: Callable[[], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Call ``send`` until GCS answers 200/201; return the object resource it answered with.

    Dropped connections, timeouts and transient statuses are retried up to ``policy.attempts``
    tries with the policy's backoff and jitter, but a request that stalled :data:`_MAX_STALLS`
    times is given up at once. ``resume`` runs before each retry; it may return the finished
    object (GCS had all the bytes after all) or prepare the next ``send``.
    """
    import requests
    from google.api_core import exceptions as api_exceptions

    attempt = stalls = 0
    while True:
        failure: BaseException
        try:
            response = send()
            if response.status_code in (200, 201):
                return dict(response.json())
            failure = api_exceptions.from_http_response(response)
            if not is_transient(response.status_code):
                raise failure
        except (requests.ConnectionError, requests.Timeout) as exc:
            failure = exc
        stalls += is_timeout(failure)
        if attempt + 1 >= policy.attempts or stalls >= _MAX_STALLS:
            raise failure
        log.warning("%s failed (%s); sending it again.", what, failure)
        time.sleep(policy.delay(attempt))
        attempt += 1
        if resume is not None:
            try:
                done = resume()
            except CacheError as exc:
                if not is_timeout(failure):
                    raise
                # The stall is the cause to report ("GCS stopped answering"); raised outside this handler so
                # that its own chain, which says it was a timeout, stays intact.
                log.warning("%s cannot resume after the stall: %s", what, exc)
                done = None
                stalls = _MAX_STALLS
            if stalls >= _MAX_STALLS:
                raise failure
            if done is not None:
                return done


def upload_part(sink: UploadingSink, relpath: str, name: str, chunks: list[bytes], size: int) -> None:
    """Upload one part of ``relpath`` as object ``name`` in a single media request (the fastest kind).

    A failed request is sent again whole from ``chunks``, which stay charged to the sink's budget
    until GCS stored them.
    """
    storage = sink.storage
    url = media_upload_url(storage.client, storage.bucket, name)

    def send() -> requests.Response:
        sink.check()
        return http_session(storage.client).post(
            url,
            data=_ChunksBody(sink, chunks, size),
            headers={"Content-Type": "application/octet-stream"},
            timeout=storage.timeout_for(size),
        )

    try:
        stored = int(send_with_retries(send, what=f"Upload of a part of {relpath}").get("size", -1))
        if stored != size:
            raise CacheError(f"GCS stored {stored} bytes of a {size}-byte part of {relpath!r} ({name}); stage again.")
    finally:
        chunks.clear()  # the pool keeps a task's arguments until it returns
        sink.budget.release(size)


def crc32c_b64(checksum: Any) -> str:
    """A google_crc32c checksum as GCS writes CRC32Cs: base64 of the big-endian digest."""
    return base64.b64encode(checksum.digest()).decode("ascii")


class ByteBudget:
    """Bytes of model data in memory across the caller and the upload workers, bounded by ``limit``.

    ``acquire`` waits while others hold bytes that they will release on their own. When all that is
    held is the caller's own ``floor`` (a large upload's reservation, whose worker is waiting for
    data), the request goes through even past the limit: odd settings can slow an upload down but
    never deadlock it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, check: Callable[[], None], floor: int = 0) -> None:
        with self._cond:
            while self.used > floor and self.used + n > self.limit:
                check()
                self._cond.wait(0.5)
            check()
            self.used += n
            self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        if n <= 0:
            return
        with self._cond:
            self.used -= n
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


@dataclass(frozen=True)
class UploadEnd:
    """The producer's last item for a streamed or composite upload: the file's CRC32C and size."""

    crc32c: str
    size: int


#: The producer's last item when it stops without finishing the file (the upload is abandoned).
CANCEL_UPLOAD = object()


class _CannotResume(CacheError):
    """GCS kept less of an interrupted upload than we still hold: only a new staging can send it again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=False)


class StreamedUpload:
    """One large file as a single request of a resumable upload session, its body fed by the producer.

    Why not the client's chunked resumable upload: each chunk is a round trip (and fake-gcs-server
    rewrites the whole partial object per chunk), so one streamed request is several times faster,
    and memory stays at the resume window. If the connection drops, GCS is asked how much it kept
    and the upload resumes from there out of the window of recent bytes we still hold; a new
    session from byte 0 when GCS cannot say (fake-gcs-server finalises the object on a status
    query, so the emulator always takes that path).
    """

    def __init__(self, sink: UploadingSink, relpath: str, key: str, size: int, q: queue.SimpleQueue[object]) -> None:
        self.sink = sink
        self.storage = sink.storage
        self.relpath = relpath
        self.key = key
        self.size = size
        self.q = q
        self.window: collections.deque[bytes] = collections.deque()
        self.window_start = 0  # offset of window[0]
        self.window_len = 0
        self.taken = 0  # bytes taken from the queue
        self.end: UploadEnd | None = None
        self.stopped = False  # the producer's last item (end or cancel) was received
        self.url = ""  # the resumable session
        self.start = 0  # the offset the next request sends from

    def run(self) -> dict[str, Any]:
        """Send the file; return the object resource GCS answered with."""
        self.url = self._new_session()
        self.start = 0
        try:
            return send_with_retries(self._send, what=f"Upload of {self.relpath}", resume=self._resume)
        except BaseException:
            self._cancel(self.url)
            raise

    def _send(self) -> requests.Response:
        return http_session(self.storage.client).put(
            self.url,
            data=_Body(self, self.start),
            headers={"Content-Range": f"bytes {self.start}-{self.size - 1}/{self.size}"},
            timeout=self.storage.timeout_for(self.size - self.start),
        )

    def _resume(self) -> dict[str, Any] | None:
        """After a failed request: continue from what GCS kept (its object when it had it all)."""
        start, done = self._persisted(self.url)
        if done is not None:
            return done
        self._check_resumable(start)
        self.start = start
        if start == 0:
            self.url = self._new_session()  # nothing kept, or GCS could not say: start over
        return None

    def _new_session(self) -> str:
        blob = self.storage.bucket.blob(self.key)
        return str(
            blob.create_resumable_upload_session(
                content_type="application/octet-stream",
                size=self.size,
                checksum=None,
                retry=self.storage.retry,
                timeout=self.storage.timeout_for(),
            )
        )

    def _persisted(self, url: str) -> tuple[int, dict[str, Any] | None]:
        """How much of the upload GCS kept (and the object if it completed); 0 when it cannot tell."""
        if self.storage.emulated:
            return 0, None
        try:
            response = http_session(self.storage.client).put(
                url, data=b"", headers={"Content-Range": f"bytes */{self.size}"}, timeout=self.storage.timeout_for()
            )
        except Exception as exc:
            log.debug("Status of the upload of %s unknown: %s", self.relpath, exc)
            return 0, None
        if response.status_code in (200, 201):
            return self.size, dict(response.json())
        if response.status_code == 308:
            kept = response.headers.get("Range", "")  # "bytes=0-<last>"
            return (int(kept.rsplit("-", 1)[1]) + 1 if "-" in kept else 0), None
        return 0, None

    def _cancel(self, url: str) -> None:
        try:
            http_session(self.storage.client).delete(url, timeout=self.storage.timeout_for())
        except Exception as exc:
            log.debug("Could not cancel the upload of %s: %s", self.relpath, exc)

    def _check_resumable(self, start: int) -> None:
        if start < self.window_start:
            raise _CannotResume(
                f"The upload of {self.relpath!r} to {self.storage.location()} broke off and cannot resume: GCS kept "
                f"{start} bytes, we still hold the bytes from {self.window_start} on (resume_window="
                f"{self.storage.resume_window}). Stage again (a retry of the task does), or raise resume_window."
            )

    def body(self, start: int) -> Iterator[bytes]:
        """Bytes from ``start``: first what the window still holds, then the producer's chunks.

        Each call starts over at ``start``, so a transport that re-sends the body (google-auth does
        after refreshing a token) replays it correctly or fails clearly.
        """
        self._check_resumable(start)
        offset = self.window_start
        for data in list(self.window):
            if offset + len(data) > start:
                yield data[max(0, start - offset) :]
            offset += len(data)
        while self.end is None:
            item = self.q.get()
            if item is CANCEL_UPLOAD:
                self.stopped = True
                raise SinkAborted()
            if isinstance(item, UploadEnd):
                self.stopped = True
                self.end = item
                return
            data = cast(bytes, item)
            self.taken += len(data)
            self._retain(data)
            try:
                yield data
            finally:
                self.sink.budget.release(len(data))  # sent (or abandoned): the window covers it now

    def _retain(self, data: bytes) -> None:
        self.window.append(data)
        self.window_len += len(data)
        limit = self.storage.resume_window
        while self.window and self.window_len - len(self.window[0]) >= limit:
            dropped = self.window.popleft()
            self.window_len -= len(dropped)
            self.window_start += len(dropped)


class _Body:
    """A request body of known length that requests streams (no chunked encoding, no copy)."""

    def __init__(self, upload: StreamedUpload, start: int) -> None:
        self.upload = upload
        self.start = start

    def __len__(self) -> int:
        return self.upload.size - self.start

    def __iter__(self) -> Iterator[bytes]:
        return self.upload.body(self.start)


class _ChunksBody:
    """A part's chunks as a request body of known length, sent without joining them; stops on abort."""

    def __init__(self, sink: UploadingSink, chunks: list[bytes], size: int) -> None:
        self.sink = sink
        self.chunks = chunks
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        for chunk in list(self.chunks):
            if self.sink.is_aborted():
                raise SinkAborted()
            yield chunk
