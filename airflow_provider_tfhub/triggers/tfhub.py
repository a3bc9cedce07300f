"""Triggers behind the deferrable TF Hub sensors: wait in the triggerer, not in a worker slot.

Only async I/O runs on the triggerer's event loop (``tests/provider/test_triggerer_loop.py`` runs them under
asyncio debug mode with a 0.1 s slow-callback threshold): the connection comes from
``TFHubHook.aget_settings()`` (``aget_connection``), the update probe uses ``httpx``'s async
client (:func:`~tfhub_cache.fetch.update_check.acheck_for_update`). Reading the cache
(a few small local files or GCS objects through the blocking storage clients) runs in a thread via
``asyncio.to_thread``; building a ``gs://`` storage may read the Google connection with the sync
API, so that runs under asgiref's ``sync_to_async``, as the Google provider's async hooks do.

Events are ``{"status": "success", ...}`` or ``{"status": "error", "message": ..., "permanent": bool}``;
the sensors' ``execute_complete`` turns them into the XCom value or a task failure, without retries
when ``permanent`` (a 404, a bad handle, a missing bucket: exactly what fails at once in poke mode).
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_tfhub.triggers.cache_access import open_cache, read_entry
from tfhub_cache.errors import TFHubError
from tfhub_cache.fetch.update_check import acheck_for_update
from tfhub_cache.units import human_duration

#: seconds between the trigger's "still not staged" lines while it waits (the first poll says it too)
STILL_WAITING_EVERY = 600.0


def preload_trigger_imports() -> None:
    """Import now what ``run()`` would otherwise import lazily on the triggerer's loop.

    The triggerer imports a trigger's module once, by its classpath, and yields to other triggers
    right after ("loading the trigger class could have been expensive"): that is the place for the
    cost, not a trigger's first poll. Covered: the async HTTP transport (httpx, anyio's asyncio
    backend and TLS streams) and what ``aget_connection`` imports on first use.
    """
    from tfhub_cache.fetch.update_check import preload_transport

    preload_transport()
    try:
        importlib.import_module("airflow.sdk.execution_time.supervisor")
    except ImportError:  # another Airflow layout: then it is not imported lazily either
        pass


preload_trigger_imports()


def error_event(handle: str, exc: BaseException) -> TriggerEvent:
    """The error event for ``exc``: its message and whether retrying can help (``permanent``).

    Core errors say so themselves (:attr:`TFHubError.permanent`); anything else (a bug, an
    unexpected transport error) is treated as transient, so Airflow's retries still apply.
    """
    permanent = isinstance(exc, TFHubError) and exc.permanent
    return TriggerEvent(
        {"status": "error", "handle": handle, "message": f"{type(exc).__name__}: {exc}", "permanent": permanent}
    )


class BaseTFHubCacheTrigger(BaseTrigger):
    """Shared arguments (all serialized; the token never is, it is re-read from the connection)."""

    def __init__(
        self,
        handle: str,
        cache_dir: str | None = None,
        tfhub_conn_id: str = "tfhub_default",
        poll_interval: float = 60.0,
    ) -> None:
        super().__init__()
        self.handle = handle
        self.cache_dir = cache_dir
        self.tfhub_conn_id = tfhub_conn_id
        self.poll_interval = float(poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "handle": self.handle,
                "cache_dir": self.cache_dir,
                "tfhub_conn_id": self.tfhub_conn_id,
                "poll_interval": self.poll_interval,
            },
        )


class TFHubModelCachedTrigger(BaseTFHubCacheTrigger):
    """Fires once ``handle`` is completely staged in the cache (its metadata exists)."""

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            _hub, storage = await open_cache(self.tfhub_conn_id, self.cache_dir)
            started = time.monotonic()
            last_said: float | None = None
            while True:
                entry = await read_entry(storage, self.handle)
                if entry is not None:
                    self.log.info("%s is staged at %s", self.handle, entry["path"])
                    yield TriggerEvent({"status": "success", "handle": self.handle, "staged": entry})
                    return
                now = time.monotonic()
                if last_said is None or now - last_said >= STILL_WAITING_EVERY:  # a long wait is not a silent one
                    last_said = now
                    self.log.info(
                        "%s is not staged in %s yet (waiting %s so far); checking every %s",
                        self.handle,
                        storage.location(),
                        human_duration(now - started),
                        human_duration(self.poll_interval),
                    )
                await asyncio.sleep(self.poll_interval)
        except Exception as exc:
            yield error_event(self.handle, exc)


class TFHubModelUpdatedTrigger(BaseTFHubCacheTrigger):
    """Fires once upstream differs from the cached copy, or at once when nothing is cached.

    Each poll sends one conditional request. Transient failures (5xx, timeouts) are logged and
    retried at the next poll; permanent ones (404, a bad handle) end the wait with an error event.
    """

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            hub, storage = await open_cache(self.tfhub_conn_id, self.cache_dir)
            while True:
                cached = await read_entry(storage, self.handle)
                try:
                    check = await acheck_for_update(
                        self.handle, cached, token=hub.token, storage=storage, mirrors=hub.mirror_map()
                    )
                except TFHubError as exc:
                    if exc.permanent:
                        raise
                    self.log.warning("Update check of %s failed (%s); retrying at the next poll.", self.handle, exc)
                else:
                    if check.changed:
                        self.log.info("%s changed upstream: %s.", self.handle, check.reason)
                        yield TriggerEvent({"status": "success", **check.as_dict(self.handle, cached)})
                        return
                    self.log.debug("%s unchanged upstream (%s).", self.handle, check.reason)
                await asyncio.sleep(self.poll_interval)
        except Exception as exc:
            yield error_event(self.handle, exc)
