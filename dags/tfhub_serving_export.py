"""Stage a TF Hub model and export it where TensorFlow Serving picks it up.

TF Serving (``--model_base_path=<base_path>/<model_name>``) serves the highest integer version
directory it finds. Trigger with a conf to choose the model and where it goes::

    {"handle": "https://tfhub.dev/google/nnlm-en-dim50/2", "base_path": "gs://my-bucket/serving",
     "model_name": "nnlm", "keep_versions": 3}

Re-running with the same model adds no version (the export says ``exported: false``); a changed
model (e.g. after a refresh) becomes the next version, and the oldest beyond ``keep_versions`` go.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from airflow_provider_tfhub.operators.export import TFHubExportForServingOperator
from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator

with DAG(
    dag_id="tfhub_serving_export",
    description="Stage a TF Hub model, then export it as the next TF Serving version.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["tfhub", "example", "serving"],
    params={
        "handle": Param("https://tfhub.dev/google/nnlm-en-dim50/2", type="string", description="Model handle."),
        "cache_dir": Param(None, type=["null", "string"], description="Local dir or gs://bucket/prefix."),
        "base_path": Param("/srv/tf-serving/models", type="string", description="TF Serving base path."),
        "model_name": Param("nnlm", type="string", description="Model directory under base_path."),
        "keep_versions": Param(3, type="integer", minimum=1, description="Versions to keep."),
    },
) as dag:
    stage = TFHubStageModelOperator(
        task_id="stage",
        handle="{{ params.handle }}",
        cache_dir="{{ params.cache_dir or '' }}",
        retries=2,
    )
    export = TFHubExportForServingOperator(
        task_id="export",
        staged=stage.output,
        base_path="{{ params.base_path }}",
        model_name="{{ params.model_name }}",
        keep_versions="{{ params.keep_versions }}",
    )
