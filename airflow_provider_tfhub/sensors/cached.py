"""``TFHubModelCachedSensor``: wait until a model is completely staged, then hand its record downstream.

Complete means what the stager promises: ``<key>.meta.json`` exists (it is written last), so a
model being staged right now is not reported early. The XCom value is the staged-model dict, the
same the stage operator returns.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import PokeReturnValue

from airflow_provider_tfhub.sensors.base import BaseTFHubCacheSensor, cached_handle
from airflow_provider_tfhub.task_helpers import run_core
from airflow_provider_tfhub.triggers.tfhub import TFHubModelCachedTrigger
from tfhub_cache.cache.entries import lookup_entry
from tfhub_cache.units import human_duration


class TFHubModelCachedSensor(BaseTFHubCacheSensor):
    """Done when ``handle`` is completely staged in ``cache_dir``; returns the staged-model dict.

    Reads only the cache (never the network) and never writes to it. See
    :class:`~airflow_provider_tfhub.sensors.base.BaseTFHubCacheSensor` for the arguments.
    """

    trigger_class = TFHubModelCachedTrigger

    def poke(self, context: Any) -> bool | PokeReturnValue:
        # A permanent error (missing bucket, denied access) fails without retries, as when deferred.
        storage = run_core(self.storage)
        entry = run_core(lambda: lookup_entry(storage, cached_handle(self.handle)))
        if entry is None:
            # where it looks and how often, so a long wait is not a silent one
            every = self.trigger_poll_interval() if self.deferrable else float(self.poke_interval)
            self.log.info(
                "%s is not staged in %s yet; checking every %s%s",
                self.handle,
                storage.location(),
                human_duration(every),
                " in the triggerer" if self.deferrable else "",
            )
            return False
        self.log.info("%s is staged at %s", self.handle, entry["path"])
        return PokeReturnValue(is_done=True, xcom_value=entry)

    def event_value(self, event: dict[str, Any]) -> Any:
        return event["staged"]
