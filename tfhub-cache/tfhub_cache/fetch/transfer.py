"""Archive sources: HTTP(S) with the TF Hub protocol and local files (``gs://`` objects: :mod:`.gcs_source`).

An :class:`~tfhub_cache.fetch.streams.ArchiveStream` is a read-only byte stream of the (compressed) archive. For HTTP a
network thread fills a small bounded queue, so download and decompression overlap while memory
stays bounded; the stream hashes what it delivers (sha256), retries transient failures with
exponential backoff and jitter, and resumes a cut-off body with ``Range`` + ``If-Range`` when the
server allows it. When it cannot resume it raises :class:`RestartRequired` and the caller starts
the extraction over.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from tfhub_cache import settings
from tfhub_cache.errors import DownloadError, RetriesExhausted
from tfhub_cache.fetch import mirrors as mirrors_mod
from tfhub_cache.fetch.ranged import connections_from, open_http_ranged
from tfhub_cache.fetch.streams import (
    CHUNK_SIZE,
    ArchiveSource,
    ArchiveStream,
    ProgressLog,
    QueuedArchiveStream,
    RestartRequired,
    SourceInfo,
    redact_error,
    strip_query_secrets,
)
from tfhub_cache.fetch.token_scope import TokenScope, auth_headers
from tfhub_cache.handles import with_format_query
from tfhub_cache.responses import check_archive_response, is_transient
from tfhub_cache.retry import RetryPolicy

if TYPE_CHECKING:  # requests costs ~95 ms to import: only stagings that use HTTP pay for it
    import requests

log = logging.getLogger(__name__)

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 10
USER_AGENT = "airflow-provider-tfhub"


DEFAULT_TIMEOUT = settings.DEFAULT_HTTP_TIMEOUT


def timeout_from_env() -> tuple[float, float]:
    """``TFHUB_HTTP_TIMEOUT``: ``READ`` or ``CONNECT,READ`` seconds (default 15,60).

    The read timeout is per socket read, not for the whole download: a stalled body fails after
    that long without data and is then resumed (``Range``) like a cut one.
    """
    return settings.http_timeout()


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
        self.session = session or thread_session()
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
        info = _source_info(resp)
        ranged = open_http_ranged(self, resp, info, connections_from(self.connections))
        return ranged if ranged is not None else _HttpStream(self, resp)


def hub_url(
    handle_url: str, format_query: tuple[str, str], mirrors: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """What to ask for ``handle_url`` in one format (``?tf-hub-format=...``), and the host the token goes to.

    With a mirror for the handle, both are the mirror's: it is asked instead of the hub, and it is
    the one host that gets the token (the hub itself is never contacted).
    """
    fetch_url = mirrors_mod.rewrite(handle_url, mirrors)
    return with_format_query(fetch_url, format_query), urllib.parse.urlsplit(fetch_url).netloc


def hub_source(
    handle_url: str,
    format_query: tuple[str, str],
    *,
    mirrors: Mapping[str, str] | None = None,
    token: str | None = None,
    retry: RetryPolicy | None = None,
    session: requests.Session | None = None,
    progress_interval: float = 5.0,
    connections: int | None = None,
) -> HttpSource:
    """The :class:`HttpSource` of a hub handle in one format, its mirror's when one applies (:func:`hub_url`).

    The one way staging, UNCOMPRESSED resolution and update checks address a hub, so a mirror and
    the token's host are handled alike by all three.
    """
    url, token_host = hub_url(handle_url, format_query, mirrors)
    return HttpSource(
        url,
        token=token,
        token_host=token_host,
        retry=retry,
        session=session,
        progress_interval=progress_interval,
        description=mirrors_mod.describe(handle_url, mirrors),
        connections=connections,
    )


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
        url=strip_query_secrets(resp.url),
        etag=h.get("ETag"),
        last_modified=h.get("Last-Modified"),
        size=int(length) if length and length.isdigit() else None,
        content_type=h.get("Content-Type"),
        accept_ranges="bytes" in h.get("Accept-Ranges", "").lower(),
    )


_local = threading.local()


def thread_session() -> requests.Session:
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
