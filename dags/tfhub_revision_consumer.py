"""Re-export a model for TF Serving whenever a new revision of it is published in the shared cache.

Scheduled on an ``Asset`` watched by
:class:`~airflow_provider_tfhub.triggers.TFHubRevisionPublishedTrigger`: the triggerer polls the
cache's metadata and fires once per revision published there, whoever staged it (the refresh DAG,
another deployment, ``tfhub-cache stage`` in a shell). The event's ``extra`` holds the ``handle``,
``revision``, ``path`` and ``sha256``; the export reads the files at that ``path``, which never
change.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, task

from airflow_provider_tfhub.triggers import TFHubRevisionPublishedTrigger

HANDLE = "https://tfhub.dev/google/nnlm-en-dim50/2"
#: The cache the revisions are published in (empty: the connection's, TFHUB_CACHE_DIR, [tfhub] cache_dir).
CACHE_DIR = os.environ.get("TFHUB_CACHE_DIR") or None
SERVING_BASE = os.environ.get("TFHUB_SERVING_BASE", "/srv/tf-serving/models")

PUBLISHED = Asset(
    name="tfhub_published_nnlm_en_dim50",
    watchers=[
        AssetWatcher(
            name="tfhub_published_nnlm_en_dim50",
            trigger=TFHubRevisionPublishedTrigger(HANDLE, cache_dir=CACHE_DIR, poll_interval=60),
        )
    ],
)

with DAG(
    dag_id="tfhub_revision_consumer",
    description="Re-export a model for TF Serving on every revision published in the cache.",
    schedule=[PUBLISHED],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["tfhub", "example"],
) as dag:

    @task
    def export(triggering_asset_events: Any = None) -> list[dict[str, Any]]:
        """Export each published revision (the event's ``extra``) as the next serving version."""
        from tfhub_cache.export import export_for_serving

        results = []
        for events in (triggering_asset_events or {}).values():
            for event in events:
                published = dict(event.extra or {})
                if published.get("path"):
                    results.append(export_for_serving(published, SERVING_BASE, "nnlm_en_dim50"))
        return results

    export()
