"""Pre-stage a list of TF Hub models into the cache and hand their paths to a consumer.

Trigger with a conf to choose models and cache::

    {"handles": ["https://tfhub.dev/google/nnlm-en-dim50/2"], "cache_dir": "gs://my-bucket/tfhub-modules"}

Each handle is staged by its own mapped task (workers stage in parallel; a shared cache is safe),
labelled in the grid by its handle (``stage [google/nnlm-en-dim50/2]``), and ``consume`` receives
every staged-model dict through XCom.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator

DEFAULT_HANDLES = [
    "https://tfhub.dev/google/nnlm-en-dim50/2",
    "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5",
]

with DAG(
    dag_id="tfhub_prestage",
    description="Stage TF Hub models into the cache (mapped) and hand the paths downstream.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["tfhub", "example"],
    params={
        "handles": Param(DEFAULT_HANDLES, type="array", description="Model handles to stage."),
        "cache_dir": Param(None, type=["null", "string"], description="Local dir or gs://bucket/prefix."),
    },
) as dag:

    @task
    def list_handles(params: dict[str, Any] | None = None) -> list[str]:
        handles = list((params or {}).get("handles") or [])
        if not handles:
            raise ValueError("params.handles is empty; pass a list of model handles in the DAG run conf.")
        return handles

    staged = TFHubStageModelOperator.partial(
        task_id="stage",
        cache_dir="{{ params.cache_dir or '' }}",
        retries=2,
    ).expand(handle=list_handles())

    # multiple_outputs=False: Airflow would otherwise push every key of the returned dict (here
    # handles, i.e. URLs) as an XCom of its own beside return_value.
    @task(multiple_outputs=False)
    def consume(models: list[dict[str, Any]]) -> dict[str, str]:
        """Stands in for training/serving: it only needs the paths, and gets them from XCom."""
        # models[:] fetches every mapped result in one request; iterating the lazy sequence instead
        # asks for one item after the last, which Airflow logs as "[error] XCom not found".
        paths = {m["handle"]: m["path"] for m in models[:]}
        for handle, path in paths.items():
            print(f"{handle} -> {path}")
        return paths

    consume(staged.output)
