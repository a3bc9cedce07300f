"""``TFHubModelUpdatedSensor``: wait until a model changed upstream (or is not cached at all).

Each poke sends one conditional request with the cached validators (ETag / Last-Modified, and
the archive size as a fallback) and reads no archive body. The XCom value says why it fired::

    {"handle", "changed": True, "reason", "etag", "last_modified", "size",
     "cached_etag", "cached_last_modified", "cached_size", "cache_key", "path", "revision", "checked_at"}

Put it in front of a stage task with ``refresh="if_changed"`` to refresh only when needed.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import PokeReturnValue

from airflow_provider_tfhub.sensors.base import BaseTFHubCacheSensor, cached_handle
from airflow_provider_tfhub.triggers.tfhub import TFHubModelUpdatedTrigger
from tfhub_cache.cache.entries import lookup_entry
from tfhub_cache.errors import TFHubError
from tfhub_cache.fetch.update_check import check_for_update


class TFHubModelUpdatedSensor(BaseTFHubCacheSensor):
    """Done when upstream differs from the cached copy of ``handle``, or nothing is cached.

    A transient failure of the check (5xx, timeout) counts as "not yet"; a permanent one (404, a
    bad handle) fails the task without retries. See
    :class:`~airflow_provider_tfhub.sensors.base.BaseTFHubCacheSensor` for the arguments.
    """

    trigger_class = TFHubModelUpdatedTrigger

    def poke(self, context: Any) -> bool | PokeReturnValue:
        from airflow.sdk.exceptions import AirflowFailException

        handle = cached_handle(self.handle)
        storage = self.storage()
        cached = lookup_entry(storage, handle)
        try:
            check = check_for_update(
                handle, cached, token=self.hook.get_token(), storage=storage, mirrors=self.hook.resolve_mirrors()
            )
        except TFHubError as exc:
            if exc.permanent:
                raise AirflowFailException(str(exc)) from exc
            self.log.warning("Update check of %s failed (%s); trying again at the next poke.", handle, exc)
            return False
        if not check.changed:
            self.log.info("%s is unchanged upstream (%s).", handle, check.reason)
            return False
        self.log.info("%s changed upstream: %s.", handle, check.reason)
        return PokeReturnValue(is_done=True, xcom_value=check.as_dict(handle, cached))

    def event_value(self, event: dict[str, Any]) -> Any:
        return {k: v for k, v in event.items() if k != "status"}
