"""The DAG ``make test-cluster`` triggers on a real CeleryExecutor cluster (see ``tests/cluster/run.sh``).

Why a dedicated DAG next to the examples: it stages the *same* handle from several workers at once
(the race a shared ``gs://`` cache must survive) and runs a deferrable sensor through the real
triggerer, which the example DAGs do not combine. The hub URL is only known when the harness has
started its loopback hub, so everything comes from the run's conf::

    {"handles": [h0, h1, h0, h2, ...],  # one mapped stage task each, duplicates on purpose
     "sensor_handle": h0,              # the model the deferrable sensor waits for
     "cache_dir": "gs://bucket/prefix"}  # optional: else the tfhub_default connection's cache_dir

The sensor has no upstream: it starts with ``list_handles`` and defers before any stage task
exists, so its completion proves the triggerer saw the entry the workers published.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator
from airflow_provider_tfhub.sensors.cached import TFHubModelCachedSensor

with DAG(
    dag_id="tfhub_cluster_check",
    description="Multi-worker check: concurrent staging of one handle into a shared cache, plus a deferrable sensor.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_tasks=16,
    tags=["tfhub", "test"],
    params={
        "handles": Param([], type="array", description="Handles to stage, one mapped task each."),
        "sensor_handle": Param("", type="string", description="Handle the deferrable sensor waits for."),
        "cache_dir": Param(None, type=["null", "string"], description="Cache; default from tfhub_default."),
    },
):

    @task
    def list_handles(params: dict[str, Any] | None = None) -> list[str]:
        handles = list((params or {}).get("handles") or [])
        if not handles:
            raise ValueError("params.handles is empty; trigger with conf {'handles': [...]}.")
        return handles

    TFHubStageModelOperator.partial(
        task_id="stage",
        cache_dir="{{ params.cache_dir or '' }}",
    ).expand(handle=list_handles())

    TFHubModelCachedSensor(
        task_id="wait_cached",
        handle="{{ params.sensor_handle }}",
        cache_dir="{{ params.cache_dir or '' }}",
        deferrable=True,
        poke_interval=2,
        timeout=300,
    )
