"""Run whenever a model this DAG depends on was refreshed, with the staged model's path in hand.

Scheduled on the ``tfhub://`` Assets that ``tfhub_cache_refresh`` emits. The producer's stage task
puts the staged-model dict (``handle``, ``path``, ``sha256``, ``etag``, ``refreshed``...) into each
event's ``extra``, so this DAG needs no XCom from another DAG and no knowledge of the cache layout.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_tfhub.assets import create_asset

#: The models this consumer needs (the same handles as in ``tfhub_cache_refresh``, hence the same Assets).
NNLM = create_asset(handle="https://tfhub.dev/google/nnlm-en-dim50/2")
MOBILENET = create_asset(handle="https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5")

with DAG(
    dag_id="tfhub_asset_consumer",
    description="Use the latest staged version of TF Hub models, triggered by their Assets.",
    schedule=NNLM | MOBILENET,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["tfhub", "example"],
) as dag:
    # multiple_outputs=False: one XCom (return_value), not one more per Asset URI key.
    @task(inlets=[NNLM, MOBILENET], multiple_outputs=False)
    def latest_models(*, inlet_events: Any = None) -> dict[str, dict[str, Any]]:
        """Stands in for training or serving: the last event of each Asset says where the model is."""
        staged: dict[str, dict[str, Any]] = {}
        for asset in (NNLM, MOBILENET):
            events = inlet_events[asset]
            if len(events):
                record = dict(events[-1].extra)
                staged[asset.uri] = record
                print(f"{asset.uri}: {record.get('path')} (sha256 {record.get('sha256')}, etag {record.get('etag')})")
        if not staged:
            raise ValueError("No staged model found in the Asset events; run tfhub_cache_refresh first.")
        return staged

    latest_models()
