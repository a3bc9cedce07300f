"""The TF Hub sensors and their triggers, against a real cache and the loopback hub.

Triggers run on a real event loop (``await trigger.run().__anext__()``), sensors poke a real cache,
deferral is checked through ``TaskDeferred`` and end to end through ``dag.test()`` of the
``tfhub_wait_for_model`` example, whose trigger runs inline.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred
from airflow_utils import get_dag, xcom

from airflow_provider_tfhub.sensors.cached import TFHubModelCachedSensor
from airflow_provider_tfhub.sensors.updated import TFHubModelUpdatedSensor
from airflow_provider_tfhub.triggers.tfhub import TFHubModelCachedTrigger, TFHubModelUpdatedTrigger
from tfhub_cache.cache.layout import EntryNames
from tfhub_cache.cache.staging import lookup_entry, stage
from tfhub_cache.errors import ConfigurationError, InvalidHandleError
from tfhub_cache.storage.local import LocalStorage

PATH = "/google/demo_v1/1"
TOKEN = "s3cret-token-123"

# The GCS emulator and per-test gs:// caches.


@pytest.fixture
def handle(handle_of: Any) -> str:
    return str(handle_of("demo_v1"))


def counters(hub: Any, path: str = PATH) -> dict[str, int]:
    models: dict[str, dict[str, int]] = hub.stats()["models"]
    return models[path]


async def first_event(trigger: Any) -> dict[str, Any]:
    event = await asyncio.wait_for(trigger.run().__anext__(), timeout=60)
    payload: dict[str, Any] = event.payload
    return payload


async def until(predicate: Any) -> None:
    """Yield to the event loop until ``predicate()`` holds (the trigger under test runs meanwhile)."""
    for _ in range(3000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


# -- triggers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [TFHubModelCachedTrigger, TFHubModelUpdatedTrigger])
def test_trigger_serialize_round_trips(cls: type[Any]) -> None:
    from airflow.sdk._shared.module_loading import import_string

    trigger = cls(handle="https://tfhub.dev/google/x/1", cache_dir="/c", tfhub_conn_id="hub", poll_interval=2.5)
    path, kwargs = trigger.serialize()
    assert import_string(path) is cls
    assert kwargs == {
        "handle": "https://tfhub.dev/google/x/1",
        "cache_dir": "/c",
        "tfhub_conn_id": "hub",
        "poll_interval": 2.5,
    }
    assert cls(**json.loads(json.dumps(kwargs))).serialize() == (path, kwargs)


async def test_cached_trigger_fires_at_once_for_a_staged_model(handle: str, cache_dir: str) -> None:
    staged = stage(handle, cache_dir)
    event = await first_event(TFHubModelCachedTrigger(handle=handle, cache_dir=cache_dir, poll_interval=0.05))
    assert event["status"] == "success"
    assert event["staged"] == {**staged, "downloaded": False}


async def test_cached_trigger_waits_until_the_model_is_staged(handle: str, cache_dir: str) -> None:
    trigger = TFHubModelCachedTrigger(handle=handle, cache_dir=cache_dir, poll_interval=0.05)
    task = asyncio.ensure_future(first_event(trigger))
    await asyncio.sleep(0.3)  # several polls of an empty cache
    assert not task.done()

    staged = await asyncio.to_thread(stage, handle, cache_dir)

    event = await task
    assert event["status"] == "success" and event["staged"]["path"] == staged["path"]


async def test_updated_trigger_fires_at_once_when_nothing_is_cached(hub: Any, handle: str, cache_dir: str) -> None:
    event = await first_event(TFHubModelUpdatedTrigger(handle=handle, cache_dir=cache_dir, poll_interval=0.05))
    assert (event["status"], event["changed"], event["reason"]) == ("success", True, "not cached")
    assert hub.stats()["requests"] == 0


async def test_updated_trigger_polls_with_conditional_requests_until_upstream_changes(
    hub: Any, handle: str, cache_dir: str, model_archives: dict[str, Any]
) -> None:
    cached = stage(handle, cache_dir)
    hub.reset_stats()
    trigger = TFHubModelUpdatedTrigger(handle=handle, cache_dir=cache_dir, poll_interval=0.05)
    task = asyncio.ensure_future(first_event(trigger))
    await until(lambda: counters(hub)["not_modified"] >= 3)  # three polls, each answered 304
    assert not task.done()
    assert counters(hub)["archive_full"] == 0

    hub.add_model(PATH, model_archives["demo_v2"])  # upstream re-publishes
    event = await task

    assert event["status"] == "success" and event["changed"] is True
    assert event["reason"].startswith("ETag changed") and event["cached_etag"] == cached["etag"]
    c = counters(hub)
    assert (c["archive_full"], c["archive_range"]) == (0, 1) and c["bytes_sent"] <= 1  # never the archive
    assert event["size"] == model_archives["demo_v2"].stat().st_size
    refreshed = stage(handle, cache_dir, refresh="if_changed")
    assert refreshed["refreshed"] is True and refreshed["etag"] == event["etag"]


async def test_updated_trigger_sends_the_token_only_to_the_hub_host(
    hub: Any, handle: str, cache_dir: str, model_archives: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TFHUB_DEFAULT", json.dumps({"conn_type": "tfhub", "password": TOKEN}))
    stage(handle, cache_dir)
    hub.add_model(PATH, model_archives["demo_v2"])
    hub.reset_stats()

    event = await first_event(TFHubModelUpdatedTrigger(handle=handle, cache_dir=cache_dir))

    assert event["status"] == "success" and TOKEN not in json.dumps(event)
    records = hub.records()
    assert {r["listener"] for r in records} == {"main", "storage"}
    for record in records:
        expected = f"Bearer {TOKEN}" if record["listener"] == "main" else None
        assert record["headers"].get("Authorization") == expected, record


async def test_updated_trigger_rides_out_transient_failures(
    hub: Any, handle: str, cache_dir: str, model_archives: dict[str, Any]
) -> None:
    stage(handle, cache_dir)
    hub.add_model(PATH, model_archives["demo_v2"])
    hub.set_faults(PATH, fail_times=2, fail_status=503, fail_on="compressed")
    hub.reset_stats()

    event = await first_event(TFHubModelUpdatedTrigger(handle=handle, cache_dir=cache_dir, poll_interval=0.05))

    assert event["status"] == "success" and event["changed"] is True
    assert counters(hub)["faulted"] == 2


async def test_updated_trigger_reports_a_permanent_error(hub: Any, handle: str, cache_dir: str) -> None:
    stage(handle, cache_dir)
    hub.remove_model(PATH)

    event = await first_event(TFHubModelUpdatedTrigger(handle=handle, cache_dir=cache_dir, poll_interval=0.05))

    assert event["status"] == "error"
    assert "HTTP 404" in event["message"] and handle in event["message"]


async def test_trigger_reports_a_bad_handle(cache_dir: str) -> None:
    event = await first_event(TFHubModelCachedTrigger(handle="ftp://x/y", cache_dir=cache_dir))
    assert event["status"] == "error" and "unsupported scheme" in event["message"]


async def test_triggers_on_a_gcs_cache(hub: Any, handle: str, gcs_cache: str, model_archives: dict[str, Any]) -> None:
    staged = await asyncio.to_thread(stage, handle, gcs_cache)

    event = await first_event(TFHubModelCachedTrigger(handle=handle, cache_dir=gcs_cache, poll_interval=0.05))
    assert event["status"] == "success" and event["staged"]["path"] == staged["path"]
    assert staged["path"] is not None and staged["path"].startswith(gcs_cache)

    hub.add_model(PATH, model_archives["demo_v2"])
    event = await first_event(TFHubModelUpdatedTrigger(handle=handle, cache_dir=gcs_cache, poll_interval=0.05))
    assert event["status"] == "success" and event["reason"].startswith("ETag changed")
    assert event["path"] == staged["path"]


# -- sensors: poke ---------------------------------------------------------------------------------------


def test_cached_sensor_pokes_the_cache(handle: str, cache_dir: str) -> None:
    sensor = TFHubModelCachedSensor(task_id="wait", handle=handle, cache_dir=cache_dir)
    assert sensor.poke({}) is False

    staged = stage(handle, cache_dir)
    result = sensor.poke({})

    assert isinstance(result, PokeReturnValue) and result.is_done
    assert result.xcom_value == {**staged, "downloaded": False}


def test_cached_sensor_ignores_an_entry_without_metadata(handle: str, cache_dir: str) -> None:
    staged = stage(handle, cache_dir)
    assert staged["cache_key"] is not None
    Path(cache_dir, EntryNames(staged["cache_key"]).meta).unlink()  # e.g. a stager that died before the end
    assert TFHubModelCachedSensor(task_id="wait", handle=handle, cache_dir=cache_dir).poke({}) is False


def test_updated_sensor_fires_without_a_request_when_nothing_is_cached(hub: Any, handle: str, cache_dir: str) -> None:
    result = TFHubModelUpdatedSensor(task_id="check", handle=handle, cache_dir=cache_dir).poke({})
    assert isinstance(result, PokeReturnValue) and result.is_done and result.xcom_value is not None
    assert result.xcom_value["reason"] == "not cached" and result.xcom_value["changed"] is True
    assert hub.stats()["requests"] == 0


def test_updated_sensor_sends_one_conditional_request_per_poke(
    hub: Any, handle: str, cache_dir: str, model_archives: dict[str, Any]
) -> None:
    cached = stage(handle, cache_dir)
    sensor = TFHubModelUpdatedSensor(task_id="check", handle=handle, cache_dir=cache_dir)
    hub.reset_stats()

    assert sensor.poke({}) is False

    c = counters(hub)
    assert (c["compressed"], c["not_modified"], c["archive_full"], c["archive_range"]) == (1, 1, 0, 0)
    (hop,) = [r for r in hub.records() if r["path"].startswith("/storage/")]
    assert hop["headers"]["If-None-Match"] == cached["etag"] and hop["headers"]["Range"] == "bytes=0-0"

    hub.add_model(PATH, model_archives["demo_v2"])
    hub.reset_stats()
    result = sensor.poke({})

    assert isinstance(result, PokeReturnValue) and result.is_done
    value = result.xcom_value
    assert value is not None
    assert value["changed"] is True and value["reason"].startswith("ETag changed")
    assert value["handle"] == handle and value["path"] == cached["path"] and value["cached_etag"] == cached["etag"]
    c = counters(hub)
    assert (c["compressed"], c["archive_full"], c["archive_range"]) == (1, 0, 1) and c["bytes_sent"] <= 1
    assert lookup_entry(LocalStorage(cache_dir), handle) is not None  # the sensor changes nothing
    json.dumps(value)


def test_updated_sensor_sends_the_token_only_to_the_hub_host(
    hub: Any, handle: str, cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TFHUB_DEFAULT", json.dumps({"conn_type": "tfhub", "password": TOKEN}))
    stage(handle, cache_dir)
    hub.reset_stats()

    assert TFHubModelUpdatedSensor(task_id="check", handle=handle, cache_dir=cache_dir).poke({}) is False

    for record in hub.records():
        expected = f"Bearer {TOKEN}" if record["listener"] == "main" else None
        assert record["headers"].get("Authorization") == expected, record


def test_updated_sensor_waits_through_transient_errors_and_fails_on_permanent_ones(
    hub: Any, handle: str, cache_dir: str
) -> None:
    stage(handle, cache_dir)
    sensor = TFHubModelUpdatedSensor(task_id="check", handle=handle, cache_dir=cache_dir)
    hub.set_faults(PATH, fail_times=-1, fail_status=503, fail_on="compressed")
    assert sensor.poke({}) is False

    hub.clear_faults()
    hub.remove_model(PATH)
    with pytest.raises(AirflowFailException, match="HTTP 404"):
        sensor.poke({})


def test_sensors_reject_bad_arguments_at_parse_time(tmp_path: Any) -> None:
    with pytest.raises(InvalidHandleError, match="local directory"):
        TFHubModelCachedSensor(task_id="wait", handle=str(tmp_path))
    with pytest.raises(InvalidHandleError, match=r"not a tfhub\.dev model handle"):
        TFHubModelUpdatedSensor(task_id="check", handle="https://tfhub.dev/google/x")
    with pytest.raises(ConfigurationError, match="poll_interval"):
        TFHubModelCachedSensor(task_id="wait", handle="https://tfhub.dev/a/b/1", poll_interval="soon")
    TFHubModelCachedSensor(task_id="wait", handle="{{ params.handle }}", poll_interval="{{ params.poll }}")


# -- sensors: deferral -----------------------------------------------------------------------------------


def test_cached_sensor_defers_to_its_trigger(handle: str, cache_dir: str) -> None:
    sensor = TFHubModelCachedSensor(
        task_id="wait", handle=handle, cache_dir=cache_dir, deferrable=True, poll_interval=7, timeout=120
    )
    with pytest.raises(TaskDeferred) as info:
        sensor.execute({})

    trigger = info.value.trigger
    assert isinstance(trigger, TFHubModelCachedTrigger)
    assert (trigger.handle, trigger.cache_dir, trigger.poll_interval) == (handle, cache_dir, 7.0)
    assert info.value.method_name == "execute_complete" and info.value.timeout == timedelta(seconds=120)

    staged = stage(handle, cache_dir)
    assert sensor.execute({}) == {**staged, "downloaded": False}  # cached already: no deferral


def test_updated_sensor_defers_while_unchanged(handle: str, cache_dir: str) -> None:
    stage(handle, cache_dir)
    sensor = TFHubModelUpdatedSensor(task_id="check", handle=handle, cache_dir=cache_dir, deferrable=True)
    with pytest.raises(TaskDeferred) as info:
        sensor.execute({})
    assert isinstance(info.value.trigger, TFHubModelUpdatedTrigger)
    assert info.value.trigger.poll_interval == sensor.poke_interval


def test_execute_complete_turns_events_into_values_or_failures(handle: str) -> None:
    cached = TFHubModelCachedSensor(task_id="wait", handle=handle)
    updated = TFHubModelUpdatedSensor(task_id="check", handle=handle)
    assert cached.execute_complete({}, {"status": "success", "staged": {"path": "/p"}}) == {"path": "/p"}
    assert updated.execute_complete({}, {"status": "success", "changed": True, "reason": "r"}) == {
        "changed": True,
        "reason": "r",
    }
    with pytest.raises(AirflowException, match="HTTP 404"):
        updated.execute_complete({}, {"status": "error", "message": "answered HTTP 404"})


def test_non_deferrable_sensor_returns_the_staged_dict(handle: str, cache_dir: str) -> None:
    staged = stage(handle, cache_dir)
    sensor = TFHubModelCachedSensor(task_id="wait", handle=handle, cache_dir=cache_dir, poke_interval=0.1, timeout=30)
    assert sensor.execute({}) == {**staged, "downloaded": False}


# -- end to end: dag.test() runs the trigger inline --------------------------------------------------------


def when_deferred(dag_id: str, task_id: str, action: Any) -> threading.Thread:
    """Run ``action`` once ``task_id`` has deferred (its TI has a trigger) while ``dag.test()`` waits on it."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    def watch() -> None:
        for _ in range(6000):
            with create_session() as session:
                deferred = (
                    session.query(TaskInstance)
                    .filter(
                        TaskInstance.dag_id == dag_id,
                        TaskInstance.task_id == task_id,
                        TaskInstance.trigger_id.is_not(None),
                        TaskInstance.state.in_(["deferred", "queued"]),
                    )
                    .count()
                )
            if deferred:
                action()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_wait_for_model_dag_defers_until_the_model_is_staged(handle: str, cache_dir: str) -> None:
    dag = get_dag("tfhub_wait_for_model")
    staged: dict[str, Any] = {}
    watcher = when_deferred(dag.dag_id, "wait_for_model", lambda: staged.update(stage(handle, cache_dir)))

    dr = dag.test(run_conf={"handle": handle, "cache_dir": cache_dir, "poll_seconds": 0.1})
    watcher.join(timeout=30)

    assert dr.state == "success"
    assert staged, "the sensor never deferred"
    assert xcom(dr, "wait_for_model", -1) == {**staged, "downloaded": False}
    assert xcom(dr, "use_model", -1) == staged["path"]
