"""The AssetWatcher event triggers, on a real event loop against the loopback hub and a real cache.

Each trigger's ``run()`` is consumed by a task that collects its events while the test changes the
world (upstream re-publishes, a stager publishes a revision) and counts what fired. "Exactly once
per change" is checked across restarts with a state store that keeps its values, as the
triggerer's ``asset_state_store`` does (same ``aget``/``aset`` calls).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from airflow_provider_tfhub.triggers import TFHubRevisionPublishedTrigger, TFHubUpstreamChangedTrigger
from airflow_provider_tfhub.triggers.events import REVISION_KEY, UPSTREAM_KEY
from tfhub_cache.cache.staging import stage
from tfhub_cache.errors import DownloadError, InvalidHandleError

PATH = "/google/watched/1"
POLL = 0.05


class KeptState:
    """Keeps values across trigger instances, like the asset state store across triggerer restarts."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = value


class Watch:
    """Runs a trigger in the background and collects its event payloads."""

    def __init__(self, trigger: Any) -> None:
        self.trigger = trigger
        self.events: list[dict[str, Any]] = []
        self.task = asyncio.ensure_future(self._collect(trigger.run()))

    async def _collect(self, events: AsyncIterator[Any]) -> None:
        async for event in events:
            self.events.append(event.payload)

    async def until(self, count: int) -> None:
        for _ in range(3000):
            if len(self.events) >= count or self.task.done():
                break
            await asyncio.sleep(0.01)
        if self.task.done() and self.task.exception():
            raise self.task.exception()  # type: ignore[misc]
        assert len(self.events) >= count, self.events

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def polls(hub: Any, n: int) -> None:
    """Let the trigger poll the hub ``n`` more times."""
    start = hub.stats()["models"].get(PATH, {}).get("compressed", 0)
    for _ in range(3000):
        if hub.stats()["models"].get(PATH, {}).get("compressed", 0) >= start + n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the trigger stopped polling")


@pytest.fixture
def handle(hub: Any, model_archives: dict[str, Any]) -> str:
    url: str = hub.add_model(PATH, model_archives["demo_v1"])
    return url


async def test_upstream_trigger_fires_once_per_change_the_cache_lacks(
    hub: Any, handle: str, cache_dir: str, model_archives: dict[str, Any]
) -> None:
    await asyncio.to_thread(stage, handle, cache_dir)
    state = KeptState()
    trigger = TFHubUpstreamChangedTrigger(handle, cache_dir=cache_dir, poll_interval=POLL)
    trigger.asset_state_store = cast(Any, state)  # the accessor API: aget/aset
    watch = Watch(trigger)
    try:
        await polls(hub, 3)
        assert watch.events == []  # unchanged: conditional requests answered 304
        hub.add_model(PATH, model_archives["demo_v2"])
        await watch.until(1)
        etag = watch.events[0]["etag"]
        assert watch.events[0]["handle"] == handle and watch.events[0]["validator"] == etag and etag
        await polls(hub, 3)
        assert len(watch.events) == 1  # still changed, still not staged: not again
    finally:
        await watch.stop()
    assert state.values[UPSTREAM_KEY] == etag

    restarted = TFHubUpstreamChangedTrigger(handle, cache_dir=cache_dir, poll_interval=POLL)
    restarted.asset_state_store = cast(Any, state)  # the accessor API: aget/aset
    watch = Watch(restarted)
    try:
        await polls(hub, 3)
        assert watch.events == []  # a triggerer restart does not fire the same change again
        refreshed = await asyncio.to_thread(stage, handle, cache_dir, refresh="if_changed")  # the refresh ran
        assert refreshed["etag"] == etag  # what fired is the version the refresh staged
        await polls(hub, 2)
        hub.add_model(PATH, model_archives["demo_v1"])  # a further upstream change
        await watch.until(1)
        assert watch.events[0]["validator"] != etag and watch.events[0]["cached_revision"]
    finally:
        await watch.stop()


async def test_upstream_trigger_without_a_store_keeps_the_watermark_in_memory(
    hub: Any, handle: str, cache_dir: str
) -> None:
    watch = Watch(TFHubUpstreamChangedTrigger(handle, cache_dir=cache_dir, poll_interval=POLL))
    try:
        await watch.until(1)  # nothing cached: fires once
        assert watch.events[0]["reason"] == "not cached"
        await asyncio.sleep(10 * POLL)
        assert len(watch.events) == 1
    finally:
        await watch.stop()


async def test_upstream_trigger_honours_mirrors_and_rides_out_transient_errors(
    hub: Any, handle: str, cache_dir: str, model_archives: dict[str, Any]
) -> None:
    public = "https://models.example" + PATH
    mirrors = {"https://models.example/": f"{hub.url}/"}
    await asyncio.to_thread(stage, public, cache_dir, mirrors=mirrors)
    hub.add_model(PATH, model_archives["demo_v2"])
    hub.set_faults(PATH, fail_times=2, fail_status=503, fail_on="compressed", retry_after=0.1)
    hub.reset_stats()
    watch = Watch(TFHubUpstreamChangedTrigger(public, cache_dir=cache_dir, poll_interval=POLL, mirrors=mirrors))
    try:
        await watch.until(1)
    finally:
        await watch.stop()
    assert [e["handle"] for e in watch.events] == [public]  # the 503s were never fired
    assert hub.stats()["models"][PATH]["faulted"] == 2


async def test_upstream_trigger_fails_loudly_on_a_permanent_error(hub: Any, handle: str, cache_dir: str) -> None:
    await asyncio.to_thread(stage, handle, cache_dir)
    hub.remove_model(PATH)
    events = TFHubUpstreamChangedTrigger(handle, cache_dir=cache_dir, poll_interval=POLL).run()
    with pytest.raises(DownloadError, match="HTTP 404"):
        await asyncio.wait_for(events.__anext__(), timeout=60)
    with pytest.raises(InvalidHandleError):
        TFHubUpstreamChangedTrigger("/some/local/dir", cache_dir=cache_dir)


async def test_revision_trigger_fires_once_per_published_revision(
    hub: Any, handle: str, cache_dir: str, model_archives: dict[str, Any]
) -> None:
    state = KeptState()
    trigger = TFHubRevisionPublishedTrigger(handle, cache_dir=cache_dir, poll_interval=POLL)
    trigger.asset_state_store = cast(Any, state)  # the accessor API: aget/aset
    watch = Watch(trigger)
    try:
        await asyncio.sleep(5 * POLL)
        assert watch.events == []  # nothing staged yet
        first = await asyncio.to_thread(stage, handle, cache_dir)
        await watch.until(1)
        assert watch.events == [
            {"handle": handle, "revision": first["revision"], "path": first["path"], "sha256": first["sha256"]}
        ]
        await asyncio.to_thread(stage, handle, cache_dir)  # a hit publishes nothing
        await asyncio.sleep(5 * POLL)
        assert len(watch.events) == 1
        hub.add_model(PATH, model_archives["demo_v2"])
        second = await asyncio.to_thread(stage, handle, cache_dir, refresh="if_changed")
        await watch.until(2)
        assert [e["revision"] for e in watch.events] == [first["revision"], second["revision"]]
    finally:
        await watch.stop()
    assert state.values[REVISION_KEY] == second["revision"]

    restarted = TFHubRevisionPublishedTrigger(handle, cache_dir=cache_dir, poll_interval=POLL)
    restarted.asset_state_store = cast(Any, state)  # the accessor API: aget/aset
    watch = Watch(restarted)
    try:
        await asyncio.sleep(5 * POLL)
        assert watch.events == []  # a restart does not fire the current revision again
    finally:
        await watch.stop()


def test_event_triggers_serialize_round_trip(cache_dir: str) -> None:
    for trigger in (
        TFHubUpstreamChangedTrigger(
            "https://tfhub.dev/google/m/1", cache_dir, 30, "c", {"https://tfhub.dev/": "https://m.example/"}
        ),
        TFHubRevisionPublishedTrigger("https://tfhub.dev/google/m/1", cache_dir, poll_interval=30),
    ):
        classpath, kwargs = trigger.serialize()
        assert classpath == f"airflow_provider_tfhub.triggers.events.{type(trigger).__name__}"
        assert type(trigger)(**kwargs).serialize() == (classpath, kwargs)
