"""A long training job that keeps its model revision from being pruned until it is done.

``stage`` stages the model with ``hold_for="7d"``: the revision it hands downstream is held for
this DAG run, so the cache's ``prune`` (which removes revisions a refresh superseded) keeps it
while ``train`` may still (re)load it, e.g. after a TPU preemption days later. ``release`` is a
teardown: it releases the run's hold whether training succeeded or failed. A run that never gets
there (the worker died) is covered by the hold's expiry: an expired hold protects nothing.

Trigger with a conf to pick the model and cache::

    {"handle": "https://tfhub.dev/google/nnlm-en-dim50/2", "cache_dir": "gs://my-bucket/tfhub-modules"}

``train`` stands in for the real job: it reads the staged files (no TensorFlow needed here). The
conf keys ``wait_for`` (a file that must exist before training ends) and ``fail_training`` are
for demonstrations and tests.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_tfhub.operators.release import TFHubReleaseOperator
from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator

DEFAULT_HANDLE = "https://tfhub.dev/google/nnlm-en-dim50/2"
HOLD_FOR = "7d"  # longer than the job can run; the teardown releases it sooner


with DAG(
    dag_id="tfhub_held_training",
    description="Hold the staged model revision for the run; release it in a teardown.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["tfhub", "example"],
    params={
        "handle": Param(DEFAULT_HANDLE, type="string"),
        "cache_dir": Param(None, type=["null", "string"], description="Local dir or gs://bucket/prefix."),
        "wait_for": Param(None, type=["null", "string"], description="Train until this file exists."),
        "fail_training": Param(False, type="boolean"),
    },
) as dag:
    stage = TFHubStageModelOperator(
        task_id="stage",
        handle="{{ params.handle }}",
        cache_dir="{{ params.cache_dir or '' }}",
        hold_for=HOLD_FOR,
    )

    @task
    def train(staged: dict[str, Any], params: dict[str, Any] | None = None) -> int:
        """Read the held revision's files (a real job would load and train on them)."""
        params = params or {}
        if params.get("wait_for"):
            while not os.path.exists(params["wait_for"]):
                time.sleep(0.2)
        if params.get("fail_training"):
            raise RuntimeError("training failed (fail_training=true)")
        return int(staged["files"] or 0)

    release = TFHubReleaseOperator(task_id="release", staged=stage.output)
    train(stage.output) >> release.as_teardown(setups=stage)
