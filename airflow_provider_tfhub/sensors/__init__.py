"""Sensors that wait for a model to be staged (:mod:`.cached`) or to change upstream (:mod:`.updated`).

Their base class lives in :mod:`.base`; it is re-exported here, where it was first defined.
"""

from __future__ import annotations

from airflow_provider_tfhub.sensors.base import BaseTFHubCacheSensor, cached_handle

__all__ = ["BaseTFHubCacheSensor", "cached_handle"]
