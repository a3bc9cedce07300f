"""Event triggers for ``AssetWatcher``: start DAGs when a model changes upstream or a revision is published.

Both subclass :class:`~airflow.triggers.base.BaseEventTrigger`, run in the triggerer for as long as
the DAG scheduled on the watched asset is active, and never end by themselves:

* :class:`TFHubUpstreamChangedTrigger` polls the hub with the conditional request of
  ``refresh="if_changed"`` (ETag / Last-Modified, mirrors and token as when staging, ``Retry-After``
  honoured) and fires once per upstream version the cache does not hold yet;
* :class:`TFHubRevisionPublishedTrigger` polls the cache's metadata and fires once per revision
  published there, by whoever staged it (another worker, another deployment, the CLI).

Exactly once per change: the last fired validator / revision is kept in the asset's state store
when the triggerer injects one (``asset_state_store``, Airflow 3.3), so a restarted triggerer does
not fire again; otherwise (tests, older triggerers) in memory. Transient failures are logged and
polled again, never fired; a permanent one (a 404, a bad handle) raises, which fails the watcher
loudly in the triggerer's log. Only async I/O runs on the loop; cache reads go to a thread, as in
the deferral triggers of :mod:`.tfhub`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_provider_tfhub.triggers.cache_access import open_cache, read_entry
from airflow_provider_tfhub.triggers.tfhub import preload_trigger_imports
from tfhub_cache.errors import TFHubError
from tfhub_cache.fetch.mirrors import parse_mirrors
from tfhub_cache.fetch.update_check import acheck_for_update
from tfhub_cache.handles import require_cacheable
from tfhub_cache.retry import RetryPolicy
from tfhub_cache.storage import Storage

preload_trigger_imports()  # the triggerer loads this module by classpath: import the transport now, not in run()

#: The state-store keys of the watermarks.
UPSTREAM_KEY = "tfhub_upstream_validator"
REVISION_KEY = "tfhub_published_revision"


@dataclass(frozen=True)
class Change:
    """What a poll saw: the watermark ``key`` and its new ``value``, the event's payload, a log phrase."""

    key: str
    value: Any
    payload: dict[str, Any]
    what: str


class _WatermarkTrigger(BaseEventTrigger):
    """Polling, the watermark and the cache access the two event triggers share."""

    def __init__(self, handle: str, cache_dir: str | None, poll_interval: float, tfhub_conn_id: str) -> None:
        super().__init__()
        require_cacheable(handle)  # a bad handle fails when the DAG is parsed
        if float(poll_interval) <= 0:
            raise ValueError(f"poll_interval={poll_interval!r} must be a positive number of seconds.")
        self.handle = handle
        self.cache_dir = cache_dir
        self.poll_interval = float(poll_interval)
        self.tfhub_conn_id = tfhub_conn_id
        self._fired: dict[str, Any] = {}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", self._arguments()

    def _arguments(self) -> dict[str, Any]:
        return {
            "handle": self.handle,
            "cache_dir": self.cache_dir,
            "poll_interval": self.poll_interval,
            "tfhub_conn_id": self.tfhub_conn_id,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hub, storage = await open_cache(self.tfhub_conn_id, self.cache_dir)
        while True:
            wait = self.poll_interval
            try:
                change = await self._poll(hub, storage)
            except (TFHubError, OSError) as exc:
                if isinstance(exc, TFHubError) and exc.permanent:
                    raise
                wait = self._transient(exc)
            else:
                if change is not None and change.value != await self._last_fired(change.key):
                    self.log.info("Firing an event: %s", change.what)  # what may end with a path: nothing after it
                    yield TriggerEvent(change.payload)
                    await self._remember(change.key, change.value)
            await asyncio.sleep(wait)

    async def _poll(self, hub: Any, storage: Storage) -> Change | None:
        """One look upstream or at the cache: the change seen now (fired unless already fired), or None."""
        raise NotImplementedError

    async def _last_fired(self, key: str) -> Any:
        store = getattr(self, "asset_state_store", None)
        if store is not None:
            try:
                value = await store.aget(key)
            except ValueError:  # one trigger watching several assets: no single store to use
                value = None
            if value is not None:
                return value
        return self._fired.get(key)

    async def _remember(self, key: str, value: Any) -> None:
        self._fired[key] = value
        store = getattr(self, "asset_state_store", None)
        if store is not None:
            try:
                await store.aset(key, value)
            except ValueError:
                pass  # kept in memory only (see _last_fired)

    def _transient(self, exc: BaseException) -> float:
        """Log a failure that polling again may cure; return how long to wait (``Retry-After`` wins)."""
        retry_after = getattr(exc, "retry_after", None)
        wait = max(self.poll_interval, RetryPolicy().delay(0, retry_after)) if retry_after else self.poll_interval
        self.log.warning("Polling %s failed (%s); polling again in %.0fs.", self.handle, exc, wait)
        return wait


class TFHubUpstreamChangedTrigger(_WatermarkTrigger):
    """Fires once per upstream version of ``handle`` that the cache does not hold yet.

    :param handle: the model to watch (tfhub.dev, Kaggle, an http(s) or gs:// archive).
    :param cache_dir: the cache to compare with (default: the connection's, ``TFHUB_CACHE_DIR``,
        ``[tfhub] cache_dir``).
    :param poll_interval: seconds between conditional requests.
    :param tfhub_conn_id: connection for the token, mirrors and cache dir.
    :param mirrors: URL prefix -> mirror prefix (dict or JSON), as for staging.

    Event payload: ``handle``, ``validator`` (the upstream ETag, else Last-Modified, else size),
    ``etag``, ``last_modified``, ``reason``, ``cached_revision``.
    """

    def __init__(
        self,
        handle: str,
        cache_dir: str | None = None,
        poll_interval: float = 3600.0,
        tfhub_conn_id: str = "tfhub_default",
        mirrors: Mapping[str, str] | str | None = None,
    ) -> None:
        super().__init__(handle, cache_dir, poll_interval, tfhub_conn_id)
        if mirrors:
            parse_mirrors(mirrors, setting="The mirrors argument")
        self.mirrors = dict(mirrors) if isinstance(mirrors, Mapping) else mirrors

    def _arguments(self) -> dict[str, Any]:
        return {**super()._arguments(), "mirrors": self.mirrors}

    async def _poll(self, hub: Any, storage: Storage) -> Change | None:
        cached = await read_entry(storage, self.handle)
        check = await acheck_for_update(
            self.handle, cached, token=hub.token, storage=storage, mirrors=hub.mirror_map(self.mirrors)
        )
        if not check.changed:
            self.log.debug("%s unchanged upstream (%s).", self.handle, check.reason)
            return None
        validator = (
            check.etag or check.last_modified or (f"size:{check.size}" if check.size is not None else "not cached")
        )
        payload = {
            "handle": self.handle,
            "validator": validator,
            "etag": check.etag,
            "last_modified": check.last_modified,
            "reason": check.reason,
            "cached_revision": (cached or {}).get("revision"),
        }
        return Change(UPSTREAM_KEY, validator, payload, f"{self.handle} changed upstream ({check.reason})")


class TFHubRevisionPublishedTrigger(_WatermarkTrigger):
    """Fires once per revision of ``handle`` published in the cache (by any stager).

    :param handle: the model whose cache entry to watch.
    :param cache_dir: local dir or ``gs://bucket/prefix`` (default: the connection's,
        ``TFHUB_CACHE_DIR``, ``[tfhub] cache_dir``).
    :param poll_interval: seconds between reads of the entry's metadata.
    :param tfhub_conn_id: connection for the cache dir and GCP credentials.

    The revision current when the watcher first starts (no watermark yet) fires too: for the
    watcher it is new. Event payload: ``handle``, ``revision``, ``path``, ``sha256``.
    """

    def __init__(
        self,
        handle: str,
        cache_dir: str | None = None,
        poll_interval: float = 60.0,
        tfhub_conn_id: str = "tfhub_default",
    ) -> None:
        super().__init__(handle, cache_dir, poll_interval, tfhub_conn_id)

    async def _poll(self, hub: Any, storage: Storage) -> Change | None:
        entry = await read_entry(storage, self.handle)
        revision = (entry or {}).get("revision")
        if entry is None or not revision:
            return None
        payload = {"handle": self.handle, "revision": revision, "path": entry["path"], "sha256": entry["sha256"]}
        return Change(
            REVISION_KEY, revision, payload, f"Revision {revision} of {self.handle} published at {entry['path']}"
        )
