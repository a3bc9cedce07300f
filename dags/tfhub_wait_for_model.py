"""Wait for a model that another pipeline stages, without holding a worker slot, then use it.

For teams that share a cache (a ``gs://`` bucket or a shared volume) filled by a platform
pipeline (``tfhub_prestage``, ``tfhub_cache_refresh``, or an init container running
``tfhub-cache stage``): the deferrable sensor waits in the triggerer until the model is completely
staged and hands the staged-model dict to the next task. Conf::

    {"handle": "https://tfhub.dev/google/nnlm-en-dim50/2", "cache_dir": "gs://my-bucket/tfhub-modules"}
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_tfhub.sensors.cached import TFHubModelCachedSensor

with DAG(
    dag_id="tfhub_wait_for_model",
    description="Wait (deferred) until a TF Hub model is staged in the shared cache, then use it.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["tfhub", "example"],
    params={
        "handle": Param("https://tfhub.dev/google/nnlm-en-dim50/2", type="string", description="Model handle."),
        "cache_dir": Param(None, type=["null", "string"], description="Local dir or gs://bucket/prefix."),
        "poll_seconds": Param(60, type="number", exclusiveMinimum=0, description="Seconds between checks."),
    },
) as dag:
    staged = TFHubModelCachedSensor(
        task_id="wait_for_model",
        handle="{{ params.handle }}",
        cache_dir="{{ params.cache_dir or '' }}",
        deferrable=True,
        poll_interval="{{ params.poll_seconds }}",
        timeout=timedelta(hours=6),
    )

    @task
    def use_model(model: dict[str, Any]) -> str:
        """Stands in for training or serving: everything it needs is in the staged-model dict."""
        print(f"Using {model['handle']} from {model['path']} (sha256 {model['sha256']})")
        return str(model["path"])

    use_model(staged.output)
