"""Permanent errors stay permanent when a sensor is deferred: the trigger's error event says so and
``execute_complete`` raises ``AirflowFailException`` (no retries), exactly as poke mode does.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from airflow_provider_tfhub.sensors.cached import TFHubModelCachedSensor
from airflow_provider_tfhub.sensors.updated import TFHubModelUpdatedSensor
from airflow_provider_tfhub.triggers.tfhub import TFHubModelCachedTrigger, error_event
from tfhub_cache.cache.staging import stage
from tfhub_cache.errors import CacheError

PATH = "/google/demo_v1/1"


async def first_event(trigger: Any) -> dict[str, Any]:
    event = await asyncio.wait_for(trigger.run().__anext__(), timeout=60)
    payload: dict[str, Any] = event.payload
    return payload


async def test_404_fails_without_retries_in_both_modes(hub: Any, handle_of: Any, cache_dir: str) -> None:
    handle = handle_of("demo_v1")
    stage(handle, cache_dir)
    poked = TFHubModelUpdatedSensor(task_id="poke", handle=handle, cache_dir=cache_dir, retries=3)
    deferred = TFHubModelUpdatedSensor(
        task_id="deferred", handle=handle, cache_dir=cache_dir, retries=3, deferrable=True, poll_interval=0.05
    )
    with pytest.raises(TaskDeferred) as info:  # unchanged upstream: the sensor defers
        await asyncio.to_thread(deferred.execute, {})
    hub.remove_model(PATH)

    with pytest.raises(AirflowFailException, match="HTTP 404"):
        await asyncio.to_thread(poked.poke, {})
    event = await first_event(info.value.trigger)
    assert event["status"] == "error" and event["permanent"] is True
    with pytest.raises(AirflowFailException, match="HTTP 404"):
        deferred.execute_complete({}, event)


async def test_bad_rendered_handle_fails_without_retries_in_both_modes(cache_dir: str) -> None:
    sensor = TFHubModelCachedSensor(task_id="wait", handle="{{ params.handle }}", cache_dir=cache_dir, retries=3)
    sensor.handle = "ftp://mirror/model.tar.gz"  # what the template rendered to
    with pytest.raises(AirflowFailException, match="unsupported scheme"):
        await asyncio.to_thread(sensor.poke, {})

    trigger = TFHubModelCachedTrigger(handle=sensor.handle, cache_dir=cache_dir, poll_interval=0.05)
    event = await first_event(trigger)
    assert event["status"] == "error" and event["permanent"] is True
    with pytest.raises(AirflowFailException, match="unsupported scheme"):
        sensor.execute_complete({}, event)


def test_transient_error_events_are_retried(handle_of: Any) -> None:
    transient = CacheError("GCS request failed: 503")
    transient.permanent = False
    event = error_event("h", transient).payload
    assert event["permanent"] is False
    sensor = TFHubModelCachedSensor(task_id="wait", handle=handle_of("demo_v1"))
    with pytest.raises(AirflowException) as info:
        sensor.execute_complete({}, event)
    assert not isinstance(info.value, AirflowFailException)
    assert error_event("h", RuntimeError("bug")).payload["permanent"] is False  # unknown: Airflow retries
