"""Archive sources: HTTP(S) with the TF Hub protocol, local files (and GCS objects, in storage.gcs).

An :class:`ArchiveStream` is a read-only byte stream of the (compressed) archive. For HTTP a
network thread fills a small bounded queue, so download and decompression overlap while memory
stays bounded; the stream hashes what it delivers (sha256), retries transient failures with
exponential backoff and jitter, and resumes a cut-off body with ``Range`` + ``If-Range`` when the
server allows it. When it cannot resume it raises :class:`RestartRequired` and the caller starts
the extraction over.
"""

from __future__ import annotations

import collections
import datetime
import email.utils
import hashlib
import logging
import os
import queue
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from tfhub_cache.errors import ConfigurationError, DownloadError
from tfhub_cache.fetch.mirrors import THROUGH_MIRROR
from tfhub_cache.fetch.token_scope import TokenScope, auth_headers
from tfhub_cache.responses import html_page_error, is_permanent, is_transient
from tfhub_cache.units import human_bytes, human_duration, human_rate

if TYPE_CHECKING:  # requests costs ~95 ms to import: only stagings that use HTTP pay for it
    import requests

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
_QUEUE_CHUNKS = 8
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 10
#: What to do about a hub's error status, for error messages of downloads and update checks alike.
STATUS_HINTS = {
    401: "the hub needs credentials: set the token (password) of the tfhub connection",
    403: "access was denied: check the token and that the model is public",
    404: "no model at that handle: check publisher, name and version",
    410: "the model was removed from the hub",
}
#: A 404 from a mirror is first a question about the mirror prefix, then about the handle.
MIRROR_404_HINT = (
    "no model at that mirror URL: check the mirror prefix (the mirrors setting), then publisher, name and version"
)
USER_AGENT = "airflow-provider-tfhub"


DEFAULT_TIMEOUT = (15.0, 60.0)


def timeout_from_env() -> tuple[float, float]:
    """``TFHUB_HTTP_TIMEOUT``: ``READ`` or ``CONNECT,READ`` seconds (default 15,60).

    The read timeout is per socket read, not for the whole download: a stalled body fails after
    that long without data and is then resumed (``Range``) like a cut one.
    """
    text = os.environ.get("TFHUB_HTTP_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or any(p <= 0 for p in parts):
        raise ConfigurationError(
            f"TFHUB_HTTP_TIMEOUT={text!r} is not READ or CONNECT,READ in seconds (e.g. 60 or 15,60)."
        )
    return (DEFAULT_TIMEOUT[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter.

    ``attempts`` counts tries of one operation (``TFHUB_DOWNLOAD_RETRIES`` sets it): a request
    that keeps failing is tried that many times, then surfaces as :class:`RetriesExhausted`,
    which nothing above retries again (so attempts never multiply across layers). The n-th
    retry waits a uniform random time in ``[0, min(max_backoff, backoff * 2**n)]`` ("full
    jitter": many workers hitting one hub do not retry in lockstep), or what ``Retry-After`` says.
    """

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 20.0
    #: Longest ``Retry-After`` we obey; a server asking for more gets this (and, if still busy, a 429 again).
    max_retry_after: float = 120.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        text = os.environ.get("TFHUB_DOWNLOAD_RETRIES", "")
        return cls(attempts=max(1, int(text))) if text.strip().isdigit() else cls()

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1`` (``Retry-After`` wins when given)."""
        wait = _retry_after_seconds(retry_after)
        if wait is not None:
            return min(wait, self.max_retry_after)
        return random.uniform(0, min(self.max_backoff, self.backoff * (2**attempt)))


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds (fractions tolerated) or an HTTP date; None if absent or bad."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


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


class RetriesExhausted(DownloadError):
    """A transient failure that persisted through every attempt of :class:`RetryPolicy`.

    Not permanent (a later task try may succeed, so Airflow's own retries apply), but
    :func:`with_retries` does not retry it again: the attempts were already spent.
    """


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


class LocalFileSource(ArchiveSource):
    """A ``.tar.gz`` on a local path (staged like a remote one, keyed by its path)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self.description = self.path

    def open(self, validators: dict[str, str] | None = None) -> ArchiveStream | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError as exc:
            raise DownloadError(
                f"Model archive {self.path!r} does not exist; check the handle.", permanent=True
            ) from exc
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        if validators and validators.get("etag") == etag:
            return None
        return _FileStream(self.path, SourceInfo(url=self.path, etag=etag, size=st.st_size))


class _FileStream(ArchiveStream):
    def __init__(self, path: str, info: SourceInfo) -> None:
        super().__init__()
        self.info = info
        self._f: BinaryIO = open(path, "rb")

    def _read(self, n: int) -> bytes:
        return self._f.read(n if n >= 0 else -1)

    def close(self) -> None:
        self._f.close()


class HttpSource(ArchiveSource):
    """A model served over HTTP(S): TF Hub protocol handles, Kaggle handles or direct archive URLs.

    ``token`` (a bearer token from the connection) is sent only to ``token_host`` (the handle's own
    ``host[:port]``), and never over plain http when the handle is https; redirects are followed
    here, hop by hop, so it never reaches a storage host.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_host: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: tuple[float, float] | None = None,
        session: requests.Session | None = None,
        progress_interval: float = 5.0,
        description: str | None = None,
        connections: int | None = None,
    ) -> None:
        self.url = url
        self.token = token
        scope_url = url if token_host is None else urllib.parse.urlsplit(url)._replace(netloc=token_host).geturl()
        self.token_scope = TokenScope.for_url(scope_url)
        self.retry = retry or RetryPolicy.from_env()
        self.timeout = timeout or timeout_from_env()
        self.session = session or _thread_session()
        self.progress_interval = progress_interval
        self.description = description or url
        #: Parallel ranged connections (None: ``TFHUB_DOWNLOAD_CONNECTIONS`` or 8; 1: one stream).
        self.connections = connections
        #: Set when the server advertised ranges but answered one with the whole body.
        self.ranges_ignored = False

    # -- one request with redirects, retries and error translation --------------------------------
    def request(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        *,
        stream: bool = True,
        redirects: bool = True,
        session: requests.Session | None = None,
    ) -> requests.Response:
        """GET ``url`` following redirects ourselves; retry transient failures; raise DownloadError.

        ``session``: for callers on other threads (parallel parts), which must not share ours.
        """
        import requests

        attempt = 0
        while True:
            try:
                resp = self._get_following(url, headers or {}, stream=stream, redirects=redirects, session=session)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt + 1 >= self.retry.attempts:
                    raise RetriesExhausted(
                        f"Could not reach {self.description!r} after {attempt + 1} attempts: "
                        f"{type(exc).__name__}: {redact_error(exc)}; check the network or the handle.",
                    ) from exc
                delay = self.retry.delay(attempt)
                # one warning per request, not one per retry: the final error says how many attempts failed
                log.log(
                    logging.WARNING if attempt == 0 else logging.DEBUG,
                    "Request for %s failed (%s); retrying up to %d more times, next in %.1fs",
                    self.description,
                    redact_error(exc),
                    self.retry.attempts - attempt - 1,
                    delay,
                )
                time.sleep(delay)
                attempt += 1
                continue
            if is_transient(resp.status_code) and attempt + 1 < self.retry.attempts:
                delay = self.retry.delay(attempt, resp.headers.get("Retry-After"))
                log.log(
                    logging.WARNING if attempt == 0 else logging.DEBUG,
                    "%s answered HTTP %d; retrying up to %d more times, next in %.1fs",
                    self.description,
                    resp.status_code,
                    self.retry.attempts - attempt - 1,
                    delay,
                )
                resp.close()
                time.sleep(delay)
                attempt += 1
                continue
            return resp

    def _get_following(
        self, url: str, headers: dict[str, str], *, stream: bool, redirects: bool, session: requests.Session | None
    ) -> requests.Response:
        for _ in range(MAX_REDIRECTS + 1):
            hop_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
            hop_headers.update(auth_headers(self.token_scope, url, self.token))
            resp = (session or self.session).get(
                url, headers=hop_headers, stream=stream, allow_redirects=False, timeout=self.timeout
            )
            if not redirects or resp.status_code not in REDIRECT_STATUSES or "Location" not in resp.headers:
                return resp
            url = urllib.parse.urljoin(url, resp.headers["Location"])
            resp.close()
        raise DownloadError(f"Too many redirects for {self.description!r}.", permanent=True)

    def open(self, validators: dict[str, str] | None = None) -> ArchiveStream | None:
        headers: dict[str, str] = {}
        if validators:
            if validators.get("etag"):
                headers["If-None-Match"] = validators["etag"]
            if validators.get("last_modified"):
                headers["If-Modified-Since"] = validators["last_modified"]
        resp = self.request(self.url, headers)
        if resp.status_code == 304:
            resp.close()
            return None
        try:
            check_archive_response(resp, self.description)
        except DownloadError as exc:
            if is_transient(exc.status):  # request() already spent the attempts on it
                raise RetriesExhausted(
                    f"{exc} Gave up after {self.retry.attempts} attempts (TFHUB_DOWNLOAD_RETRIES).",
                    status=exc.status,
                ) from exc
            raise
        return self._stream(resp)

    def _stream(self, resp: requests.Response) -> ArchiveStream:
        """Parallel ranged parts when the server allows it and the archive is big enough, else one stream."""
        from tfhub_cache.fetch.ranged import connections_from, open_http_ranged

        info = _source_info(resp)
        ranged = open_http_ranged(self, resp, info, connections_from(self.connections))
        return ranged if ranged is not None else _HttpStream(self, resp)


def check_archive_response(resp: requests.Response, description: str) -> None:
    """Raise a clear, permanent-or-not DownloadError for anything but a 200 archive body."""
    status = resp.status_code
    if status == 200:
        html = html_page_error(description, resp.headers.get("Content-Type"), status)
        if html is not None:
            resp.close()
            raise html
        return
    resp.close()
    hint = STATUS_HINTS.get(status, "the server could not serve the archive")
    if status == 404 and THROUGH_MIRROR in description:
        hint = MIRROR_404_HINT
    raise DownloadError(
        f"{description!r} answered HTTP {status} ({resp.reason}): {hint}.",
        permanent=is_permanent(status),
        status=status,
    )


class QueuedArchiveStream(ArchiveStream):
    """An archive stream filled by a producer thread through a bounded queue.

    The producer (a network or GCS download) runs while the consumer inflates, so both overlap,
    and memory stays bounded by ``_QUEUE_CHUNKS`` x :data:`CHUNK_SIZE`. The producer puts bytes,
    then None at the end, or the exception that stopped it (re-raised to the consumer).
    """

    def __init__(self) -> None:
        super().__init__()
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=_QUEUE_CHUNKS)
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


class _HttpStream(QueuedArchiveStream):
    """The body of one archive response, read by a network thread.

    The network thread also hashes (sha256 releases the GIL), so the consumer thread, which
    inflates, does nothing but take chunks off the queue: network, hashing, inflating and disk
    writes all overlap.
    """

    def __init__(self, source: HttpSource, resp: requests.Response) -> None:
        super().__init__()
        self.source = source
        self.info = _source_info(resp)
        self._resp_url = resp.url
        self._start(self._pump, "tfhub-download", resp)

    def chunks(self) -> Iterator[bytes]:  # already hashed and counted by the network thread
        return self._raw_chunks()

    def read(self, n: int = -1) -> bytes:  # already hashed and counted by the network thread
        return self._read(n)

    def _pump(self, resp: requests.Response) -> None:
        import requests

        received = 0
        attempt = 0
        progress = ProgressLog(self.source.description, self.info.size, interval=self.source.progress_interval)
        try:
            while True:
                try:
                    for chunk in resp.raw.stream(CHUNK_SIZE, decode_content=False):
                        self._sha.update(chunk)
                        self.bytes_read += len(chunk)
                        if not self._put(chunk):
                            return
                        received += len(chunk)
                        progress.update(received)
                    if self.info.size is not None and received < self.info.size:
                        raise requests.ConnectionError(f"body ended after {received} of {self.info.size} bytes")
                    break
                except (requests.RequestException, OSError, _urllib3_errors()) as exc:
                    resp.close()
                    attempt += 1
                    if attempt >= self.source.retry.attempts:
                        raise RetriesExhausted(
                            f"Download of {self.source.description!r} failed after {attempt} attempts at byte "
                            f"{received}: {redact_error(exc)}."
                        ) from exc
                    resp = self._resume(received, attempt, exc)
            progress.finish(received)
            self._put(None)
        except BaseException as exc:
            self._put(exc)
        finally:
            resp.close()

    def _resume(self, received: int, attempt: int, cause: BaseException) -> requests.Response:
        validator = self.info.etag or self.info.last_modified
        if not (self.info.accept_ranges and validator):
            raise RestartRequired(f"server cannot resume ({redact_error(cause)})")
        delay = self.source.retry.delay(attempt - 1)
        log.warning(
            "Download of %s cut off at byte %d (%s); resuming in %.1fs.",
            self.source.description,
            received,
            redact_error(cause),
            delay,
        )
        time.sleep(delay)
        headers = {"Range": f"bytes={received}-", "If-Range": validator}
        resp = self.source.request(self._resp_url, headers, redirects=False)
        if resp.status_code == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {received}-"):
            return resp
        resp.close()
        raise RestartRequired(f"resume answered HTTP {resp.status_code}; the archive changed or ranges are off")


def _source_info(resp: requests.Response) -> SourceInfo:
    """What a ``200`` archive response says about the archive."""
    h = resp.headers
    length = h.get("Content-Length")
    return SourceInfo(
        url=_strip_query_secrets(resp.url),
        etag=h.get("ETag"),
        last_modified=h.get("Last-Modified"),
        size=int(length) if length and length.isdigit() else None,
        content_type=h.get("Content-Type"),
        accept_ranges="bytes" in h.get("Accept-Ranges", "").lower(),
    )


_local = threading.local()


def _thread_session() -> requests.Session:
    """One session per thread: stagings that follow each other on a worker thread reuse its
    keep-alive connections (three hops per model), while threads never share one."""
    import requests

    session: requests.Session | None = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    return session


def _urllib3_errors() -> type[BaseException]:
    import urllib3.exceptions

    return urllib3.exceptions.HTTPError


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
                human_bytes(done),
                human_bytes(self.total),
                int(100 * done / self.total),
                human_rate(rate),
                eta,
            )
        else:
            log.info("Downloading %s (%s so far, %s)", self.what, human_bytes(done), human_rate(rate))

    def finish(self, done: int) -> None:
        elapsed = self.clock() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        log.info(
            "Downloaded %s (%s in %s, %s on average)",
            self.what,
            human_bytes(done),
            human_duration(elapsed),
            human_rate(rate),
        )


def _strip_query_secrets(url: str) -> str:
    """Drop the query of a (possibly signed) URL before it is stored or logged."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def redact_error(exc: BaseException) -> str:
    """An exception message without URL queries (signed URLs carry credentials)."""
    text = str(exc)
    return text.split("?", 1)[0] + ("?…" if "?" in text else "")


def with_retries(fn: Callable[[], Any], what: str, retry: RetryPolicy) -> Any:
    """Call ``fn`` and retry on :class:`RestartRequired` or a transient :class:`DownloadError`.

    :class:`RetriesExhausted` is not retried: the layer below already spent its attempts.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except (RestartRequired, DownloadError) as exc:
            permanent = isinstance(exc, DownloadError) and (exc.permanent or isinstance(exc, RetriesExhausted))
            attempt += 1
            if permanent or attempt >= retry.attempts:
                if isinstance(exc, RestartRequired):
                    raise DownloadError(f"Download of {what!r} kept failing: {exc}.") from exc
                raise
            delay = retry.delay(attempt)
            log.warning("Staging %s restarts (%s) in %.1fs.", what, exc, delay)
            time.sleep(delay)
