"""The TPU example's stage -> plan part, small enough for the UI test: stage one model, then plan and smoke-load it.

``plan`` is ``TFHubLoadModelOperator`` with ``tpu=True`` as in ``dags/tfhub_tpu_training.py`` (the
target is a TPU host, not this worker): it imports TensorFlow, loads the SavedModel with the TPU plan
and calls its signature once, which is where TensorFlow's C++ start-up notices are written.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from airflow_provider_tfhub.operators.load import TFHubLoadModelOperator
from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator

with DAG(
    dag_id="tfhub_ui_load",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"handle": Param("", type="string"), "cache_dir": Param("", type="string")},
) as dag:
    stage = TFHubStageModelOperator(task_id="stage", handle="{{ params.handle }}", cache_dir="{{ params.cache_dir }}")
    TFHubLoadModelOperator(task_id="plan", staged=stage.output, tpu=True)
