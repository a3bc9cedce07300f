"""What every archive source hands to the extractor: a hashed byte stream, what the source said, how it fails.

The HTTP source (:mod:`.transfer`), its parallel ranged parts (:mod:`.ranged`) and the ``gs://``
source (:mod:`.gcs_source`) all build on these; kept apart from any transport so that none of them
imports another to get at the shared pieces.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tfhub_cache.storage.base import CHUNK_SIZE
from tfhub_cache.units import format_bytes_si, format_rate_si, human_duration

log = logging.getLogger(__name__)

#: Chunks a producer thread may queue ahead of the consumer (x :data:`CHUNK_SIZE` bytes).
QUEUE_CHUNKS = 8


@dataclass
class SourceInfo:
    """What the source said about the archive: validators for refresh and the final URL."""

    url: str
    etag: str | None = None
    last_modified: str | None = None
    size: int | None = None
    content_type: str | None = None
    accept_ranges: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class RestartRequired(Exception):
    """The body was cut off and cannot be resumed: the caller must start extraction again."""


class ArchiveStream:
    """Base class: a readable byte stream that hashes and counts what it delivers.

    Consumers that can take whole chunks use :meth:`chunks` (no copies: that is what the
    extractor does); :meth:`read` serves file-object style callers.
    """

    info: SourceInfo

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.bytes_read = 0

    def read(self, n: int = -1) -> bytes:
        data = self._read(n)
        if data:
            self._sha.update(data)
            self.bytes_read += len(data)
        return data

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def chunks(self) -> Iterator[bytes]:
        """The rest of the stream as chunks of at most :data:`CHUNK_SIZE` bytes (hashed, counted)."""
        while data := self.read(CHUNK_SIZE):
            yield data

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def drain(self) -> None:
        """Read to the end (so that :attr:`sha256` covers the whole archive)."""
        for _ in self.chunks():
            pass

    def _read(self, n: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ArchiveSource:
    """Where an archive comes from. ``open`` returns None when conditional validators still match."""

    description: str = ""

    def open(self, validators: dict[str, str] | None = None) -> ArchiveStream | None:
        raise NotImplementedError


class QueuedArchiveStream(ArchiveStream):
    """An archive stream filled by a producer thread through a bounded queue.

    The producer (a network or GCS download) runs while the consumer inflates, so both overlap,
    and memory stays bounded by ``QUEUE_CHUNKS`` x :data:`CHUNK_SIZE`. The producer puts bytes,
    then None at the end, or the exception that stopped it (re-raised to the consumer).
    """

    def __init__(self) -> None:
        super().__init__()
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._buffer = b""
        self._pos = 0
        self._eof = False
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self, target: Callable[..., None], name: str, *args: Any) -> None:
        self._thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException | None) -> bool:
        """Queue ``item`` for the consumer; False once the stream was closed (the producer stops)."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _next_chunk(self) -> bytes:
        """The next queued chunk, b"" at the end; re-raises the producer's failure."""
        if self._eof:
            return b""
        item = self._queue.get()
        if item is None:
            self._eof = True
            return b""
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        return item

    def _raw_chunks(self) -> Iterator[bytes]:
        if self._pos < len(self._buffer):
            rest, self._buffer, self._pos = self._buffer[self._pos :], b"", 0
            yield rest
        while chunk := self._next_chunk():
            yield chunk

    def _read(self, n: int) -> bytes:
        # Serve one queued chunk from an offset: short reads are fine for a raw stream, and small
        # reads never copy the rest of the chunk.
        if n < 0:
            return b"".join(self._raw_chunks())
        if self._pos >= len(self._buffer):
            self._buffer, self._pos = self._next_chunk(), 0
        data = self._buffer[self._pos : self._pos + n]
        self._pos += len(data)
        return data

    def close(self) -> None:
        self._closed.set()
        while self._thread is not None and self._thread.is_alive():  # unblock a producer on a full queue
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        if self._thread is not None:
            self._thread.join()


class ProgressLog:
    """The progress lines of one download, as a person reads them.

    ``Downloading <url> (12.3 MB of 50.0 MB, 25%, 8.1 MB/s, about 5s left)`` every ``interval``
    seconds: the rate is measured over the last :attr:`RATE_WINDOW` seconds and the time left comes
    from it, so a download that sped up (a ranged download fans out after a slow start) or slowed
    down says what it does now, not its average since the start. The last line,
    ``Downloaded <url> (50.0 MB in 9s, 5.6 MB/s on average)``, says that its rate is the average.
    ``what`` (a URL) is followed by a space, never by punctuation, so log viewers link it correctly.
    """

    #: seconds of recent progress the rate (and so the time left) is measured over
    RATE_WINDOW = 10.0

    def __init__(
        self, what: str, total: int | None, *, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.what = what
        self.total = total
        self.interval = interval
        self.clock = clock
        self.started = self.last_log = clock()
        self._samples: collections.deque[tuple[float, int]] = collections.deque([(self.started, 0)])

    def update(self, done: int) -> None:
        """Record that ``done`` bytes arrived; log a line when ``interval`` has passed since the last one."""
        now = self.clock()
        if now - self._samples[-1][0] >= 0.25:  # a few samples a second are plenty for the rate
            self._samples.append((now, done))
            while len(self._samples) > 2 and now - self._samples[1][0] >= self.RATE_WINDOW:
                self._samples.popleft()
        if now - self.last_log < self.interval:
            return
        self.last_log = now
        since, done_then = self._samples[0]
        rate = (done - done_then) / (now - since) if now > since else 0.0
        if self.total:
            left = self.total - done
            eta = f", about {human_duration(left / rate)} left" if rate > 0 and left > 0 else ""
            log.info(
                "Downloading %s (%s of %s, %d%%, %s%s)",
                self.what,
                format_bytes_si(done),
                format_bytes_si(self.total),
                int(100 * done / self.total),
                format_rate_si(rate),
                eta,
            )
        else:
            log.info("Downloading %s (%s so far, %s)", self.what, format_bytes_si(done), format_rate_si(rate))

    def finish(self, done: int) -> None:
        elapsed = self.clock() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        log.info(
            "Downloaded %s (%s in %s, %s on average)",
            self.what,
            format_bytes_si(done),
            human_duration(elapsed),
            format_rate_si(rate),
        )


def strip_query_secrets(url: str) -> str:
    """Drop the query of a (possibly signed) URL before it is stored or logged."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def redact_error(exc: BaseException) -> str:
    """An exception message without URL queries (signed URLs carry credentials)."""
    text = str(exc)
    return text.split("?", 1)[0] + ("?…" if "?" in text else "")


__all__ = [
    "CHUNK_SIZE",
    "QUEUE_CHUNKS",
    "ArchiveSource",
    "ArchiveStream",
    "ProgressLog",
    "QueuedArchiveStream",
    "RestartRequired",
    "SourceInfo",
    "redact_error",
    "strip_query_secrets",
]
