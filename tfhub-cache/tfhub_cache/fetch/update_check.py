"""Has a cached model changed upstream? One conditional request answers it, without downloading.

The probe sends the compressed-format request a stager would send, with the cached validators
(``If-None-Match`` / ``If-Modified-Since``) and ``Range: bytes=0-0``: an unchanged model answers
304, a changed one answers 206 with a one-byte body (or 200 from servers without ranges, whose
body is never read). Redirects are followed hop by hop and the token goes only to the handle's own
host, exactly as :class:`~tfhub_cache.fetch.transfer.HttpSource` does when staging.

Two transports share :func:`compare`: :func:`check_for_update` (``requests``, for sensors' ``poke``
on a worker) and :func:`acheck_for_update` (``httpx.AsyncClient``, for triggers, whose event loop
must never block). httpx is imported only inside the async function, so a sensor's ``poke`` and
the CLI never load it. Archive handles on a local path or ``gs://`` have
no HTTP validators: their source's own ``open(validators)`` decides (in a thread when async).
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tfhub_cache.errors import DownloadError
from tfhub_cache.fetch import mirrors as mirrors_mod
from tfhub_cache.fetch.streams import ArchiveSource, redact_error
from tfhub_cache.fetch.token_scope import TokenScope, auth_headers
from tfhub_cache.fetch.transfer import (
    MAX_REDIRECTS,
    REDIRECT_STATUSES,
    USER_AGENT,
    LocalFileSource,
    hub_source,
    hub_url,
)
from tfhub_cache.handles import COMPRESSED_FORMAT_QUERY, Handle, require_cacheable
from tfhub_cache.responses import html_page_error, status_error
from tfhub_cache.retry import RetryPolicy
from tfhub_cache.storage.base import Storage
from tfhub_cache.timestamps import utc_now


@dataclass(frozen=True)
class UpdateCheck:
    """The answer of one probe: ``changed`` and why, plus what upstream reported."""

    changed: bool
    reason: str
    etag: str | None = None
    last_modified: str | None = None
    size: int | None = None

    def as_dict(self, handle: str, cached: Mapping[str, Any] | None) -> dict[str, Any]:
        """The sensors' XCom / trigger event payload (JSON-friendly, no secrets)."""
        cached = cached or {}
        return {
            "handle": handle,
            "changed": self.changed,
            "reason": self.reason,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "size": self.size,
            "cached_etag": cached.get("etag"),
            "cached_last_modified": cached.get("last_modified"),
            "cached_size": cached.get("archive_bytes"),
            "cache_key": cached.get("cache_key"),
            "path": cached.get("path"),
            "revision": cached.get("revision"),
            "checked_at": utc_now(),
        }


NOT_CACHED = UpdateCheck(True, "not cached")


def probe_headers(cached: Mapping[str, Any]) -> dict[str, str]:
    headers = {"Range": "bytes=0-0"}
    if cached.get("etag"):
        headers["If-None-Match"] = str(cached["etag"])
    if cached.get("last_modified"):
        headers["If-Modified-Since"] = str(cached["last_modified"])
    return headers


def compare(cached: Mapping[str, Any], status: int, headers: Mapping[str, str], description: str) -> UpdateCheck:
    """Decide from one response whether upstream differs from ``cached`` (a staged-model dict).

    ETag first (what the hub and GCS promise to change with the content), then Last-Modified, then
    the archive's size. With nothing to compare, the answer is "changed": a refresh with
    ``if_changed`` then downloads once and records validators for next time.
    """
    if status not in (200, 206, 304):
        raise status_error(status, description, retry_after=headers.get("Retry-After"), doing="answer the update check")
    etag = headers.get("ETag") or None
    last_modified = headers.get("Last-Modified") or None
    if status == 304:
        return UpdateCheck(
            False,
            "not modified (HTTP 304)",
            etag or cached.get("etag"),
            last_modified or cached.get("last_modified"),
            cached.get("archive_bytes"),
        )
    html = html_page_error(description, headers.get("Content-Type"), status)
    if html is not None:
        raise html
    size = _total_size(status, headers)

    def verdict(changed: bool, reason: str) -> UpdateCheck:
        return UpdateCheck(changed, reason, etag, last_modified, size)

    old_etag, old_modified, old_size = cached.get("etag"), cached.get("last_modified"), cached.get("archive_bytes")
    if old_etag and etag:
        if _weak(etag) != _weak(str(old_etag)):
            return verdict(True, f"ETag changed from {old_etag} to {etag}")
        return verdict(False, "same ETag")
    if old_modified and last_modified:
        if _http_time(last_modified) != _http_time(str(old_modified)):
            return verdict(True, f"Last-Modified changed from {old_modified} to {last_modified}")
        return verdict(False, "same Last-Modified")
    if old_size is not None and size is not None:
        if int(old_size) != size:
            return verdict(True, f"archive size changed from {old_size} to {size} bytes")
        return verdict(False, "same archive size (the only validator available)")
    return verdict(True, "no validator to compare (no ETag, Last-Modified or size recorded)")


def check_for_update(
    handle: str,
    cached: Mapping[str, Any] | None,
    *,
    token: str | None = None,
    storage: Storage | None = None,
    retry: RetryPolicy | None = None,
    mirrors: Mapping[str, str] | None = None,
) -> UpdateCheck:
    """Blocking probe (``requests``): has ``handle`` changed since ``cached`` was staged?

    With ``mirrors``, the mirror is asked (and gets the token), as when staging.
    """
    parsed = require_cacheable(handle)
    if cached is None:
        return NOT_CACHED
    if parsed.kind != "http":
        return _check_source(parsed, cached, storage)
    source = hub_source(
        parsed.text, COMPRESSED_FORMAT_QUERY, mirrors=mirrors, token=token, retry=retry or RetryPolicy(attempts=2)
    )
    resp = source.request(source.url, probe_headers(cached), stream=True)
    try:
        return compare(cached, resp.status_code, resp.headers, source.description)
    finally:
        resp.close()


async def acheck_for_update(
    handle: str,
    cached: Mapping[str, Any] | None,
    *,
    token: str | None = None,
    storage: Storage | None = None,
    timeout: float = 30.0,
    mirrors: Mapping[str, str] | None = None,
) -> UpdateCheck:
    """Non-blocking probe (``httpx``) for triggers; same request, same answer as :func:`check_for_update`.

    No retries here: a trigger polls again anyway. Transient failures raise a non-permanent
    :class:`DownloadError`, which the caller may log and ignore until the next poll.
    """
    parsed = require_cacheable(handle)
    if cached is None:
        return NOT_CACHED
    if parsed.kind != "http":
        return await asyncio.to_thread(_check_source, parsed, cached, storage)
    import httpx

    url, _token_host = hub_url(parsed.text, COMPRESSED_FORMAT_QUERY, mirrors)
    scope = TokenScope.for_url(url)  # the handle's URL, or its mirror's
    headers = probe_headers(cached)
    new_client = await asyncio.to_thread(_async_client, timeout)
    try:
        async with new_client as client:
            for _ in range(MAX_REDIRECTS + 1):
                hop = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
                hop.update(auth_headers(scope, url, token))
                async with client.stream("GET", url, headers=hop) as resp:  # the body is never read
                    location = resp.headers.get("Location")
                    if resp.status_code in REDIRECT_STATUSES and location:
                        url = urllib.parse.urljoin(url, location)
                        continue
                    return compare(cached, resp.status_code, resp.headers, mirrors_mod.describe(parsed.text, mirrors))
    except httpx.HTTPError as exc:
        raise DownloadError(
            f"Could not reach {parsed.text!r}: {type(exc).__name__}: {redact_error(exc)}; "
            "check the network or the handle."
        ) from exc
    raise DownloadError(f"Too many redirects for {parsed.text!r}.", permanent=True)


def _async_client(timeout: float) -> Any:
    """A new ``httpx.AsyncClient``, built in a worker thread (never on a triggerer's loop):
    building one loads the CA bundle into an SSL context (tens of ms, more on a busy host)."""
    import httpx

    return httpx.AsyncClient(timeout=timeout, follow_redirects=False)


def preload_transport() -> None:
    """Import httpx and what its first request imports lazily (anyio's asyncio backend, TLS
    streams: ~0.1-0.3 s cold). Triggers call it when their module is imported, so a trigger's
    first poll never imports on the event loop."""
    for module in ("httpx", *_LAZY_TRANSPORT_MODULES):
        importlib.import_module(module)


_LAZY_TRANSPORT_MODULES = (
    "anyio._backends._asyncio",
    "anyio._core._synchronization",
    "anyio._core._tasks",
    "anyio._core._sockets",
    "anyio.streams.tls",
    "httpcore._backends.anyio",
)


def _check_source(parsed: Handle, cached: Mapping[str, Any], storage: Storage | None) -> UpdateCheck:
    """Archive files on a path or in GCS: their source's ``open(validators)`` says unchanged (None)."""
    source: ArchiveSource
    if parsed.kind == "local_archive":
        source = LocalFileSource(parsed.text)
    else:
        from tfhub_cache.fetch.gcs_source import GCSArchiveSource

        source = GCSArchiveSource(parsed.text, storage=storage)
    validators = {k: str(cached[k]) for k in ("etag", "last_modified") if cached.get(k)}
    stream = source.open(validators)
    if stream is None:
        return UpdateCheck(False, "not modified", cached.get("etag"), cached.get("last_modified"))
    try:
        info = stream.info
        headers = {k: v for k, v in (("ETag", info.etag), ("Last-Modified", info.last_modified)) if v}
        if info.size is not None:
            headers["Content-Length"] = str(info.size)
        return compare(cached, 200, headers, parsed.text)
    finally:
        stream.close()


def _total_size(status: int, headers: Mapping[str, str]) -> int | None:
    if status == 206:
        total = headers.get("Content-Range", "").rpartition("/")[2].strip()
        return int(total) if total.isdigit() else None
    length = headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _weak(etag: str) -> str:
    return etag.strip().removeprefix("W/")


def _http_time(value: str) -> float | str:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return value.strip()
