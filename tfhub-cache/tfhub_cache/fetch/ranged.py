"""Parallel ranged ("sliced") downloads of one archive, handed on in order as one stream.

Why: one TCP stream over the internet rarely fills the link (window size x round-trip time, and
per-connection shaping at CDNs and object stores), so tensorflow_hub's single stream -- and ours,
before this module -- waits on the network. When the archive's server says it can (a length,
``Accept-Ranges: bytes`` and a validator), the archive is cut into parts of
:func:`~tfhub_cache.settings.download_part_size` bytes fetched by up to ``connections`` worker
threads at once, each part with its own ``Range`` request. A pump thread takes the parts in order,
hashes them (sha256, and CRC32C for GCS) and feeds the same bounded queue that a single stream
would, so inflate and extraction are unchanged.

The plain request's body serves the first parts, as one stream; the other connections open only
once the pump is seen waiting for the network (:data:`FAN_OUT_AFTER`): on loopback or a fast LAN
one stream outruns inflate and more connections would only cost CPU and memory. Archives of
fewer than :data:`MIN_PARTS` parts, servers without ranges and ``connections=1`` get one stream.

Memory stays bounded whatever the archive size: at most ``connections`` parts are in flight (the
one being handed on plus those buffered ahead of it), i.e. ``connections x part size`` bytes, and
parts run ahead of the pump only while it waits for the network.

Failures: a part whose connection drops is resumed from its last byte (``Range: bytes=n-end``),
with the source's retry budget per part (reset whenever the part makes progress). Every part
request carries ``If-Range`` with the validator of the first response, so if the archive changes
upstream mid-download a part comes back ``200`` with the new body instead of ``206``: the whole
download then restarts (:class:`~tfhub_cache.fetch.transfer.RestartRequired`) rather
than mixing two versions. A server that advertised ranges but answers a range with the same
archive's whole body is remembered and gets one stream on the restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tfhub_cache import settings
from tfhub_cache.errors import DownloadError, RetriesExhausted
from tfhub_cache.fetch.streams import (
    CHUNK_SIZE,
    ProgressLog,
    QueuedArchiveStream,
    RestartRequired,
    SourceInfo,
    redact_error,
)
from tfhub_cache.responses import check_archive_response
from tfhub_cache.retry import RetryPolicy
from tfhub_cache.units import format_bytes_si, format_rate_si

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

#: Fan out only when the network is what the pipeline waits for: the download starts on the plain
#: response alone, and this many seconds after its first chunk (then after every chunk) it opens
#: all connections if the in-order pump spent more than :data:`STARVED_SHARE` of that time waiting
#: for bytes. On
#: loopback or a fast LAN one stream outruns inflate, and more connections would only cost CPU and
#: memory (measured: +0.5 s CPU and +70 MB RSS on the 497 MB benchmark archive). 0: fan out at once.
FAN_OUT_AFTER = 0.1
STARVED_SHARE = 0.5


def connections_from(explicit: int | str | None = None) -> int:
    """Connections for one download: argument > ``TFHUB_DOWNLOAD_CONNECTIONS`` > 8; ``1`` means one stream."""
    return settings.download_connections(explicit)


#: Archives of fewer parts than this are fetched as one stream: they take a fraction of a second
#: even at tens of MB/s, and could not keep the default connections busy anyway.
MIN_PARTS = 8


def plan_parts(size: int | None, connections: int, part_size: int) -> int:
    """How many parts to fetch in parallel; 0 means "one stream" (unknown size, one connection, small)."""
    if size is None or connections <= 1 or size < MIN_PARTS * part_size:
        return 0
    return -(-size // part_size)


class TransientPartError(Exception):
    """A part request failed in a way a retry may fix (a 5xx or 429 from an object store)."""


class _Stopped(Exception):
    """The stream was closed or failed elsewhere: a worker stops fetching."""


class PartFetcher:
    """Fetches byte ranges of one pinned archive version; one instance is shared by all workers.

    :meth:`fetch` passes the bytes ``[start, end)`` to ``emit`` in order (possibly fewer if the
    connection drops: the caller resumes from where ``emit`` stopped being called); it raises one
    of :attr:`transient` for what a retry may fix, :class:`RestartRequired` when the archive
    changed, anything else for permanent failures.
    """

    transient: tuple[type[BaseException], ...] = (TransientPartError, ConnectionError)

    def fetch(self, start: int, end: int, emit: Callable[[bytes], None]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the fetcher holds (an unread first response, per-thread sessions)."""


@dataclass
class _Part:
    start: int
    end: int
    chunks: deque[bytes] = field(default_factory=deque)
    done: bool = False
    error: BaseException | None = None


class RangedStream(QueuedArchiveStream):
    """An archive fetched as parallel parts, delivered in order through the base class's queue.

    ``expected_crc32c`` (4 big-endian bytes, as GCS reports it) is checked against the CRC32C of
    the whole reassembled archive at the end, since ranged reads cannot be checked per request.

    Only one worker runs until the network proves to be the bottleneck (see :data:`FAN_OUT_AFTER`);
    then all ``connections`` do.
    """

    def __init__(
        self,
        fetcher: PartFetcher,
        info: SourceInfo,
        *,
        description: str,
        connections: int,
        part_size: int,
        retry: RetryPolicy,
        progress_interval: float = 5.0,
        expected_crc32c: bytes | None = None,
    ) -> None:
        super().__init__()
        assert info.size is not None
        self.info = info
        self.description = description
        self.fetcher = fetcher
        self.retry = retry
        self.progress_interval = progress_interval
        self.expected_crc32c = expected_crc32c
        size = info.size
        self._parts = [_Part(s, min(s + part_size, size)) for s in range(0, size, part_size)]
        self.connections = min(connections, len(self._parts))
        self._cond = threading.Condition()
        self._head = 0  # index of the part the pump hands on next
        self._next = 0  # index of the next part a worker takes
        self._stop = False
        self._failure: BaseException | None = None
        self._active = 1 if FAN_OUT_AFTER > 0 else self.connections  # workers allowed to take parts
        self._starved = 0.0  # seconds the pump waited for bytes of the head part, after the first chunk
        self._pump_waiting = False  # the pump is waiting for the head part's bytes right now
        self._t0: float | None = None  # when the first chunk arrived
        log.info(
            "Downloading %s (%s) with up to %d connections in %d parts of %s",
            description,
            format_bytes_si(size),
            self.connections,
            len(self._parts),
            format_bytes_si(part_size),  # one unit base per line: decimal, like every size in the logs
        )
        self._workers = [
            threading.Thread(target=self._work, args=(i,), name=f"tfhub-part-{i}", daemon=True)
            for i in range(self.connections)
        ]
        for worker in self._workers:
            worker.start()
        self._start(self._pump, "tfhub-ranged")

    # The pump hashes and counts, so the consumer (inflate) does nothing but take chunks.
    def chunks(self) -> Iterator[bytes]:
        return self._raw_chunks()

    def read(self, n: int = -1) -> bytes:
        return self._read(n)

    # -- workers ----------------------------------------------------------------------------------
    def _ahead_limit(self) -> int:
        """How many parts may be in flight from the pump's head on.

        Two (the head and the next) unless all connections are open *and* the pump is waiting for
        the network: when the consumer is the slower side (inflate, or a gs:// cache's uploads),
        parts fetched further ahead would only sit in memory, so memory stays at two parts then.
        """
        return self.connections if self._active > 1 and self._pump_waiting else 2

    def _take(self, worker: int) -> _Part | None:
        """The next part to fetch, waiting while :meth:`_ahead_limit` parts are in flight and, for all
        but the first worker, until one stream proved too slow."""
        with self._cond:
            while (
                not self._stop
                and self._next < len(self._parts)
                and (worker >= self._active or self._next - self._head >= self._ahead_limit())
            ):
                self._cond.wait()
            if self._stop or self._next >= len(self._parts):
                return None
            part = self._parts[self._next]
            self._next += 1
            return part

    def _maybe_fan_out(self) -> None:
        """Open all connections once the pump has mostly been waiting for the network."""
        if self._t0 is None:
            self._t0 = time.monotonic()
            return
        elapsed = time.monotonic() - self._t0
        if elapsed < FAN_OUT_AFTER or self._starved <= STARVED_SHARE * elapsed:
            return
        with self._cond:
            self._active = self.connections
            self._cond.notify_all()
        log.info(
            "Downloading %s with %d connections from now on: one connection gave %s and unpacking "
            "waited for the network",
            self.description,
            self.connections,
            format_rate_si(self.bytes_read / elapsed),
        )

    def _work(self, worker: int) -> None:
        try:
            while (part := self._take(worker)) is not None:
                self._fetch_part(part)
        except BaseException as exc:
            with self._cond:
                if self._failure is None:
                    self._failure = exc
                self._stop = True
                self._cond.notify_all()

    def _fetch_part(self, part: _Part) -> None:
        got = 0
        length = part.end - part.start

        def emit(chunk: bytes) -> None:
            nonlocal got
            if self._stop:
                raise _Stopped()
            if got + len(chunk) > length:
                chunk = chunk[: length - got]
            got += len(chunk)
            with self._cond:
                part.chunks.append(chunk)
                self._cond.notify_all()

        failures = 0
        while got < length:
            before = got
            try:
                self.fetcher.fetch(part.start + got, part.end, emit)
                if got < length:
                    raise ConnectionError(f"part ended after {got} of {length} bytes")
            except _Stopped:
                return
            except self.fetcher.transient as exc:
                failures = 1 if got > before else failures + 1
                if failures >= self.retry.attempts:
                    raise RetriesExhausted(
                        f"Download of {self.description!r} failed after {failures} attempts at byte "
                        f"{part.start + got}: {redact_error(exc)}."
                    ) from exc
                delay = self.retry.delay(failures - 1)
                log.warning(
                    "Part at byte %d of %s cut off at byte %d (%s); resuming in %.1fs.",
                    part.start,
                    self.description,
                    part.start + got,
                    redact_error(exc),
                    delay,
                )
                time.sleep(delay)
        with self._cond:
            part.done = True
            self._cond.notify_all()

    # -- the in-order pump ----------------------------------------------------------------------------
    def _ordered(self) -> Iterator[bytes]:
        for index, part in enumerate(self._parts):
            while True:
                with self._cond:
                    if not part.chunks and not part.done:
                        waited = time.monotonic()
                        self._pump_waiting = True
                        self._cond.notify_all()  # workers may take parts further ahead now
                        while not part.chunks and not part.done and self._failure is None and not self._closed.is_set():
                            self._cond.wait(0.1)
                        self._pump_waiting = False
                        if self._t0 is not None:
                            self._starved += time.monotonic() - waited
                    if self._failure is not None:
                        raise self._failure
                    if self._closed.is_set():
                        return
                    if part.chunks:
                        chunk = part.chunks.popleft()
                    else:  # done and empty: the next part may start
                        self._head = index + 1
                        self._cond.notify_all()
                        break
                yield chunk

    def _pump(self) -> None:
        crc: Any = None
        if self.expected_crc32c is not None:
            import google_crc32c

            crc = google_crc32c.Checksum()
        progress = ProgressLog(self.description, self.info.size, interval=self.progress_interval)
        try:
            for chunk in self._ordered():
                self._sha.update(chunk)
                if crc is not None:
                    crc.update(chunk)
                self.bytes_read += len(chunk)
                if not self._put(chunk):
                    return
                if self._active < self.connections:
                    self._maybe_fan_out()
                progress.update(self.bytes_read)
            if self._closed.is_set():
                return
            if crc is not None and crc.digest() != self.expected_crc32c:
                raise DownloadError(
                    f"The CRC32C of {self.description!r} as downloaded does not match the object's; "
                    "the download was corrupted in transit: retrying."
                )
            progress.finish(self.bytes_read)
            self._put(None)
        except BaseException as exc:
            self._put(exc)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for worker in self._workers:
            worker.join()
        self.fetcher.close()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        super().close()  # joins the pump, which joins the workers


# -- HTTP ---------------------------------------------------------------------------------------------------


class RangedHttpSource(Protocol):
    """What the parts need of the HTTP source (:class:`~tfhub_cache.fetch.transfer.HttpSource`).

    A protocol rather than the class, so that the source can hand its response over to this module
    without the two importing each other.
    """

    description: str
    retry: RetryPolicy
    progress_interval: float
    #: Set here when the server advertised ranges but answered one with the whole body.
    ranges_ignored: bool

    def request(  # the part of HttpSource.request the parts use
        self, url: str, headers: dict[str, str] | None = None, *, redirects: bool, session: requests.Session | None
    ) -> requests.Response: ...


def open_http_ranged(
    source: RangedHttpSource, resp: requests.Response, info: SourceInfo, connections: int
) -> RangedStream | None:
    """A :class:`RangedStream` over ``resp``'s URL, or None when one stream is better or the only way.

    ``resp`` is the ``200`` answer to the plain request; its body serves the first part, so the
    parallel download costs no extra round trip.
    """
    part_size = settings.download_part_size()
    validator = _if_range_validator(info)
    if not (info.accept_ranges and validator) or source.ranges_ignored:
        return None
    if not plan_parts(info.size, connections, part_size):
        return None
    fetcher = _HttpPartFetcher(source, resp, info, validator)
    return RangedStream(
        fetcher,
        info,
        description=source.description,
        connections=connections,
        part_size=part_size,
        retry=source.retry,
        progress_interval=source.progress_interval,
    )


def _if_range_validator(info: SourceInfo) -> str | None:
    """A strong ETag, else Last-Modified: RFC 9110 forbids weak ETags in ``If-Range``."""
    if info.etag and not info.etag.startswith("W/"):
        return info.etag
    return info.last_modified


class _HttpPartFetcher(PartFetcher):
    def __init__(self, source: RangedHttpSource, first: requests.Response, info: SourceInfo, validator: str) -> None:
        import requests
        import urllib3.exceptions

        self.transient = (TransientPartError, requests.RequestException, OSError, urllib3.exceptions.HTTPError)
        self.source = source
        self.url = first.url
        self.info = info
        self.validator = validator
        self._first: requests.Response | None = first
        self._first_pos = 0  # where the plain response's body continues
        self._lock = threading.Lock()
        self._sessions: list[requests.Session] = []
        self._local = threading.local()

    def _session(self) -> requests.Session:
        """One session per worker thread: requests sessions are not safe to share between threads."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(session)
        return session

    def fetch(self, start: int, end: int, emit: Callable[[bytes], None]) -> None:
        """Read on from the plain response while parts are asked for in its order, else a Range request."""
        with self._lock:
            first, self._first = self._first, None
        if first is not None:
            if start == self._first_pos:
                self._read_plain(first, start, end, emit)
                return
            first.close()  # a resume or a part out of its order: the plain stream has served its turn
        headers = {"Range": f"bytes={start}-{end - 1}", "If-Range": self.validator}
        resp = self.source.request(self.url, headers, redirects=False, session=self._session())
        if resp.status_code != 206:
            self._not_partial(resp, start)
        content_range = resp.headers.get("Content-Range", "")
        if not content_range.startswith(f"bytes {start}-") or not content_range.endswith(f"/{self.info.size}"):
            resp.close()
            raise RestartRequired(f"a part request for byte {start} was answered with {content_range!r}")
        try:
            for chunk in resp.raw.stream(CHUNK_SIZE, decode_content=False):
                emit(chunk)
        finally:
            resp.close()

    def _read_plain(self, resp: requests.Response, start: int, end: int, emit: Callable[[bytes], None]) -> None:
        """Exactly ``[start, end)`` from the plain response (which carries the whole archive); keep it for the
        next part when it is intact."""
        got, length, keep = 0, end - start, False
        try:
            while got < length:
                chunk = resp.raw.read(min(CHUNK_SIZE, length - got), decode_content=False)
                if not chunk:
                    return
                emit(chunk)
                got += len(chunk)
            keep = end < (self.info.size or 0)
        finally:
            if keep:
                with self._lock:
                    self._first, self._first_pos = resp, end
            else:
                resp.close()

    def _not_partial(self, resp: requests.Response, start: int) -> None:
        """A part answered other than 206: the archive changed, the server ignores ranges, or an error."""
        status = resp.status_code
        if status == 416:
            resp.close()
            raise RestartRequired(f"a part request for byte {start} answered 416: the archive changed length")
        if status == 200:
            etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
            resp.close()
            if (etag, modified) != (self.info.etag, self.info.last_modified):
                raise RestartRequired(
                    f"the archive changed upstream during the download (a part came back with ETag {etag!r}); "
                    "starting over so that the staged model is one version"
                )
            self.source.ranges_ignored = True
            raise RestartRequired("the server ignores Range requests; starting over with one stream")
        try:
            check_archive_response(resp, self.source.description)
        finally:
            resp.close()
        raise RestartRequired(f"a part request for byte {start} answered HTTP {status}")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            first, self._first = self._first, None
            sessions, self._sessions = self._sessions, []
        if first is not None:
            first.close()
        for session in sessions:
            session.close()


# -- GCS ----------------------------------------------------------------------------------------------------


def open_gcs_ranged(
    blob: Any,
    info: SourceInfo,
    connections: int,
    translate: Callable[[BaseException], BaseException],
    *,
    expected_crc32c: bytes | None,
) -> RangedStream | None:
    """Parallel ranged reads of a generation-pinned GCS ``blob``, or None for one stream."""
    part_size = settings.download_part_size()
    if not plan_parts(info.size, connections, part_size):
        return None
    return RangedStream(
        _GCSPartFetcher(blob, translate),
        info,
        description=info.url,
        connections=connections,
        part_size=part_size,
        retry=RetryPolicy.from_env(),
        expected_crc32c=expected_crc32c,
    )


class _GCSPartFetcher(PartFetcher):
    """Ranged media reads of one object generation (``blob`` was made with ``generation=``).

    If the object is replaced mid-download the pinned generation is gone (404 without versioning)
    and the download restarts on the new generation; it never mixes two.
    """

    def __init__(self, blob: Any, translate: Callable[[BaseException], BaseException]) -> None:
        import requests

        self.transient = (TransientPartError, requests.ConnectionError, requests.Timeout, ConnectionError)
        self.blob = blob
        self.translate = translate

    def fetch(self, start: int, end: int, emit: Callable[[bytes], None]) -> None:
        writer = _ChunkWriter(emit)
        try:
            # retry=None: a dropped read is resumed by the caller from the last byte handed on.
            self.blob.download_to_file(writer, start=start, end=end - 1, raw_download=True, checksum=None, retry=None)
        except _Stopped:
            raise
        except self.transient:
            raise
        except Exception as exc:
            if getattr(exc, "code", None) == 404:
                raise RestartRequired(
                    f"generation {self.blob.generation} of {self.blob.name!r} disappeared during the download "
                    "(the object was replaced); starting over"
                ) from exc
            translated = self.translate(exc)
            if isinstance(translated, DownloadError) and not translated.permanent:
                raise TransientPartError(str(translated)) from exc
            raise translated from exc
        finally:
            writer.flush()


class _ChunkWriter:
    """The file object ``download_to_file`` writes to: hands on :data:`CHUNK_SIZE` pieces as they arrive."""

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self.emit = emit
        self.pending = bytearray()

    def write(self, data: bytes) -> int:
        self.pending += data
        if len(self.pending) >= CHUNK_SIZE:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.pending:
            data, self.pending = bytes(self.pending), bytearray()
            self.emit(data)
