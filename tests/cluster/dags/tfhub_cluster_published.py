"""The consumer DAG ``make test-cluster`` starts through an ``AssetWatcher`` (see ``tests/cluster/harness.py``).

Why: the event trigger must work where it matters, in the cluster's own triggerer watching the shared
``gs://`` cache that Celery workers publish into. The asset is watched by
``TFHubRevisionPublishedTrigger``; when ``tfhub_cluster_check`` stages the watched handle (four
workers racing for it, one revision published) the triggerer fires once and the scheduler starts
this DAG once; the example DAG's later cache hits publish nothing, so nothing fires again.

A watcher's trigger is built when the file is parsed, before any run conf exists, and the loopback
hub's URL is only known once the harness started it: the harness passes the watched handle in
``TFHUB_CLUSTER_WATCHED_HANDLE``. Without it (the file parsed anywhere else) there is no DAG.
The DAG is unpaused at creation (the cluster pauses new DAGs), since watchers of paused DAGs do not run.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, task

from airflow_provider_tfhub.triggers import TFHubRevisionPublishedTrigger

DAG_ID = "tfhub_cluster_published"
WATCHED = os.environ.get("TFHUB_CLUSTER_WATCHED_HANDLE", "")

if WATCHED:
    published = Asset(
        name="tfhub_cluster_published",
        watchers=[
            AssetWatcher(
                name="tfhub_cluster_published",
                trigger=TFHubRevisionPublishedTrigger(WATCHED, poll_interval=2),  # cache: tfhub_default's gs://
            )
        ],
    )

    with DAG(
        dag_id=DAG_ID,
        description="Started by TFHubRevisionPublishedTrigger when a revision of the watched handle is published.",
        schedule=[published],
        start_date=datetime(2026, 1, 1),
        catchup=False,
        is_paused_upon_creation=False,
        tags=["tfhub", "test"],
    ):

        @task
        def consume(triggering_asset_events: Any = None) -> dict[str, Any]:
            """Return the watcher's payloads, so the harness can compare them with what the stagers published."""
            events = list((triggering_asset_events or {}).get(published, []))
            payloads = [dict((event.extra or {}).get("payload") or {}) for event in events]
            if not payloads:
                raise ValueError(f"{DAG_ID} ran without an event from its watcher.")
            return {"events": len(payloads), **payloads[-1]}

        consume()
