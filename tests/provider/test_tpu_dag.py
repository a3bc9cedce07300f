"""Issue 4 acceptance: the ``tfhub_tpu_training`` example DAG passes ``dag.test()`` on CPU.

``dag.test()`` runs tasks in the calling process and the training task imports TensorFlow, so the
runs happen in a subprocess (same ``AIRFLOW_HOME`` and SQLite DB as this session): the pytest process
keeps its promise of never importing TensorFlow. Parsing is checked here, in-process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow_utils import get_dag
from tls_relay import TFGCS, tf_gcs

from tfhub_cache import loading
from tfhub_cache.testing.models import expected_output

TESTS = Path(__file__).resolve().parents[1]  # where airflow_utils lives
DAG_ID = "tfhub_tpu_training"

RUN_DAG_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from airflow_utils import get_dag, xcom
dag = get_dag(sys.argv[2])
runs = []
for conf in json.loads(sys.argv[3]):
    dr = dag.test(run_conf=conf)
    values = {task_id: xcom(dr, task_id).get(-1) for task_id in ("stage", "load", "train")}
    runs.append({
        "state": str(dr.state),
        "tasks": {ti.task_id: str(ti.state) for ti in dr.get_task_instances()},
        "xcom": values,
    })
print("RESULT " + json.dumps(runs))
"""


def env_without_tpu(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment minus every TPU signal (``dag.test`` on CPU must plan for no TPU)."""
    base = {k: v for k, v in os.environ.items() if k not in (*loading.TPU_ENV_VARS, "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS")}
    return {**base, **(extra or {})}


def run_dag(confs: list[dict[str, Any]], env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """``dag.test(run_conf=conf)`` for each conf, in one fresh Python; returns states and XComs."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RUN_DAG_SCRIPT), str(TESTS), DAG_ID, json.dumps(confs)],
        env=env_without_tpu(env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs: list[dict[str, Any]] = json.loads(lines[-1].removeprefix("RESULT "))
    for run in runs:
        assert run["state"] == "success", (run, proc.stdout[-6000:])
    return runs


def test_dag_parses_with_params_and_order() -> None:
    dag = get_dag(DAG_ID)

    assert {t.task_id for t in dag.tasks} == {"stage", "load", "train"}
    assert dag.get_task("stage").downstream_task_ids == {"load"}
    assert dag.get_task("load").downstream_task_ids == {"train"}
    params = dag.params.dump()
    assert params["handle"] == "https://tfhub.dev/google/nnlm-en-dim50/2"
    assert params["cache_dir"] is None and params["load_format"] == "COMPRESSED"
    assert dag.get_task("stage").load_format == "{{ params.load_format }}"
    assert dag.get_task("load").tpu == "auto"


@pytest.fixture(scope="module")
def cpu_runs(hub_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[dict[str, Any]], str]]:
    cache = str(tmp_path_factory.mktemp("tpu-dag") / "cache")
    handle = f"{hub_server.url}/google/small_a/1"
    confs = [
        {"handle": handle, "cache_dir": cache},
        # A signature the model lacks: training falls back to the Reusable SavedModel API (model(x)).
        {"handle": handle, "cache_dir": cache, "signature": "no_such_signature"},
    ]
    yield run_dag(confs), cache


def test_dag_stages_loads_and_trains_on_cpu(cpu_runs: tuple[list[dict[str, Any]], str]) -> None:
    runs, cache = cpu_runs
    xcom = runs[0]["xcom"]

    assert runs[0]["tasks"] == {"stage": "success", "load": "success", "train": "success"}
    assert xcom["stage"]["downloaded"] is True and xcom["stage"]["path"].startswith(cache)
    plan = xcom["load"]
    assert plan["path"] == xcom["stage"]["path"] and plan["tpu"] is False and plan["load_options"] == {}
    assert "auto-detected no TPU" in plan["reason"]
    assert plan["smoke_test"]["outputs"] == {"y": expected_output([[0.0, 0.0, 0.0]], scale=3.0, offset=0.5)}
    loss = xcom["train"]
    assert isinstance(loss, float) and math.isfinite(loss) and loss > 0


def test_dag_trains_through_the_reusable_savedmodel_api(cpu_runs: tuple[list[dict[str, Any]], str]) -> None:
    runs, _ = cpu_runs
    second = runs[1]["xcom"]

    assert second["stage"]["downloaded"] is False  # the first run staged it
    assert isinstance(second["train"], float) and math.isfinite(second["train"])


@pytest.fixture(scope="module")
def gcs_for_tf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TFGCS]:
    with tf_gcs(tmp_path_factory.mktemp("tf-gcs-dag")) as env:
        yield env


def test_dag_in_uncompressed_mode_reads_the_model_from_gcs(
    hub: Any, model_archives: dict[str, Path], gcs_for_tf: TFGCS, tmp_path: Path
) -> None:
    location = "gs://tfhub-modules/google/gs_dag/1/uncompressed"
    gcs_for_tf.upload_tree(model_archives["small_b"].parent / "saved_model", location)
    handle = hub.add_model("/google/gs_dag/1", model_archives["small_b"], uncompressed_location=location)
    cache = tmp_path / "cache"

    (run,) = run_dag([{"handle": handle, "cache_dir": str(cache), "load_format": "UNCOMPRESSED"}], env=gcs_for_tf.env)

    stage, plan = run["xcom"]["stage"], run["xcom"]["load"]
    assert stage["path"] == location and stage["load_format"] == "UNCOMPRESSED" and stage["downloaded"] is False
    assert plan["path"] == location and plan["load_options"] == {}
    assert plan["smoke_test"]["outputs"] == {"y": expected_output([[0.0, 0.0, 0.0]], scale=0.5, offset=-1.0)}
    assert math.isfinite(run["xcom"]["train"])
    assert not cache.exists()
    assert gcs_for_tf.relay.stats.refused == [] and gcs_for_tf.relay.stats.connects
