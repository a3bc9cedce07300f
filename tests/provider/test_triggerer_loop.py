"""Nothing our triggers do blocks the triggerer's event loop.

The triggers run in a fresh interpreter (nothing imported or warmed up by other tests), as in a
triggerer that just loaded them, under asyncio debug mode with ``slow_callback_duration = 0.1``:
every step of a task that holds the loop longer than 0.1 s is logged by asyncio, and the test
fails on any such warning. Covered: the cached trigger on a local and a ``gs://`` cache and the
updated trigger's probe, with a connection (token) read through ``aget_connection``, and the
AssetWatcher event triggers (upstream probe, published revision) on both caches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tfhub_cache.cache.staging import stage

RUNNER = r"""
import asyncio, json, logging, sys

from airflow_provider_tfhub.triggers.events import TFHubRevisionPublishedTrigger, TFHubUpstreamChangedTrigger
from airflow_provider_tfhub.triggers.tfhub import TFHubModelCachedTrigger, TFHubModelUpdatedTrigger

slow = []


class Collect(logging.Handler):
    def emit(self, record):
        slow.append(record.getMessage())


logging.getLogger("asyncio").addHandler(Collect())
logging.getLogger("asyncio").setLevel(logging.WARNING)
specs = json.loads(sys.argv[1])


async def main():
    asyncio.get_running_loop().slow_callback_duration = 0.1
    classes = {
        "cached": TFHubModelCachedTrigger,
        "updated": TFHubModelUpdatedTrigger,
        "upstream": TFHubUpstreamChangedTrigger,
        "published": TFHubRevisionPublishedTrigger,
    }
    triggers = [classes[kind](**kwargs) for kind, kwargs in specs]
    async def first(trigger):
        return (await asyncio.wait_for(trigger.run().__anext__(), 60)).payload
    return await asyncio.gather(*(first(t) for t in triggers))


events = asyncio.run(main(), debug=True)
print(json.dumps({"slow": slow, "events": events}))
"""


def run_triggers(specs: list[tuple[str, dict[str, Any]]], env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(specs)], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_triggers_never_block_the_event_loop(
    hub: Any, handle_of: Any, cache_dir: str, gcs_cache: str, model_archives: dict[str, Any]
) -> None:

    local = handle_of("demo_v1")
    remote = handle_of("small_a")
    stage(local, cache_dir)
    stage(remote, gcs_cache)
    hub.add_model("/google/demo_v1/1", model_archives["demo_v2"])  # the updated triggers fire after a probe
    hub.add_model("/google/small_a/1", model_archives["small_b"])
    env = {**os.environ, "AIRFLOW_CONN_TFHUB_DEFAULT": json.dumps({"conn_type": "tfhub", "password": "t0k"})}
    specs = [
        ("cached", {"handle": local, "cache_dir": cache_dir, "poll_interval": 0.05}),
        ("cached", {"handle": remote, "cache_dir": gcs_cache, "poll_interval": 0.05}),
        ("updated", {"handle": local, "cache_dir": cache_dir, "poll_interval": 0.05}),
        ("updated", {"handle": remote, "cache_dir": gcs_cache, "poll_interval": 0.05}),
        ("upstream", {"handle": local, "cache_dir": cache_dir, "poll_interval": 0.05}),
        ("upstream", {"handle": remote, "cache_dir": gcs_cache, "poll_interval": 0.05}),
        ("published", {"handle": local, "cache_dir": cache_dir, "poll_interval": 0.05}),
        ("published", {"handle": remote, "cache_dir": gcs_cache, "poll_interval": 0.05}),
    ]

    # A fresh interpreter each time; a second one only if the first saw a slow step: what this test
    # guards against (cold imports, CA loading, sync config reads on the loop) blocks in every cold
    # start, while a 2-core CI host shared with other jobs can stretch one step past 0.1 s now and then.
    runs = []
    for _ in range(2):
        result = run_triggers(specs, env)
        deferral, upstream, published = result["events"][:4], result["events"][4:6], result["events"][6:]
        assert [e["status"] for e in deferral] == ["success"] * 4, result["events"]
        assert all(e["reason"].startswith("ETag changed") for e in deferral[2:]), result["events"]
        assert [e["handle"] for e in upstream + published] == [local, remote] * 2, result["events"]
        assert all(e["reason"].startswith("ETag changed") for e in upstream), result["events"]
        assert all(e["revision"] for e in published), result["events"]
        runs.append(result["slow"])
        if not result["slow"]:
            break
    assert runs[-1] == [], "\n\n".join("\n".join(slow) for slow in runs)
