"""Issues 4 and 20: the ``tfhub_tpu_training`` example DAG trains where training runs.

``stage`` puts the model into a gs:// cache (the emulator), ``plan`` plans for the declared TPU target
and smoke-loads it with stock TensorFlow through the TLS relay, then:

* ``train_in_venv`` (``@task.external_python``) runs in a venv built here with uv holding only
  ``tfhub-cache[tensorflow]``: no ``airflow`` importable there; it pulls the revision into a local
  dir, applies ``/job:localhost`` when the TPU is declared, and the model computes (two finite losses);
* ``train_on_gke_tpu`` (``KubernetesPodOperator``) sends its rendered pod to a loopback recorder that
  stands in for the Kubernetes API server (none runs here): the pod carries the plan in
  ``TFHUB_LOAD_PLAN``, the ``google.com/tpu`` resource and the GKE TPU node selector.

``dag.test()`` runs in a subprocess (same ``AIRFLOW_HOME`` and SQLite DB): the pytest process never
imports TensorFlow.
"""

from __future__ import annotations

import http.server
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow_utils import get_dag
from tls_relay import TFGCS, tf_gcs
from training_venv import build_training_venv

from tfhub_cache import loading

TESTS = Path(__file__).resolve().parents[1]  # where airflow_utils lives
ROOT = TESTS.parent
DAG_ID = "tfhub_tpu_training"
BUCKET = "tpu-dag"
TASKS = ("stage", "plan", "plan_json", "choose_runner", "train_in_venv", "train_on_gke_tpu")
IO_DEVICE_OPTIONS = {"experimental_io_device": "/job:localhost"}

RUN_DAG_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from airflow_utils import get_dag, xcom
dag = get_dag(sys.argv[2])
runs = []
for conf in json.loads(sys.argv[3]):
    dr = dag.test(run_conf=conf)
    values = {}
    for task_id in json.loads(sys.argv[4]):
        try:
            values[task_id] = xcom(dr, task_id).get(-1)
        except Exception:
            values[task_id] = None
    runs.append({
        "state": str(dr.state),
        "tasks": {ti.task_id: str(ti.state) for ti in dr.get_task_instances()},
        "xcom": values,
    })
print("RESULT " + json.dumps(runs))
"""


DAG_TEST = (sys.executable, "-c", textwrap.dedent(RUN_DAG_SCRIPT))


def env_without_tpu(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment minus every TPU signal (the CPU host must detect no TPU)."""
    base = {k: v for k, v in os.environ.items() if k not in (*loading.TPU_ENV_VARS, "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS")}
    return {**base, **(extra or {})}


def run_dag(confs: list[dict[str, Any]], env: dict[str, str]) -> list[dict[str, Any]]:
    """``dag.test(run_conf=conf)`` for each conf, in one fresh Python; returns states and XComs."""
    proc = subprocess.run(
        [*DAG_TEST, str(TESTS), DAG_ID, json.dumps(confs), json.dumps(TASKS)],
        env=env_without_tpu(env),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs: list[dict[str, Any]] = json.loads(lines[-1].removeprefix("RESULT "))
    for run in runs:
        run["log"] = proc.stdout[-8000:] + proc.stderr[-8000:]
    return runs


def test_dag_parses_in_production_shape() -> None:
    dag = get_dag(DAG_ID)

    assert {t.task_id for t in dag.tasks} == set(TASKS)
    assert dag.get_task("stage").downstream_task_ids == {"plan"}
    assert dag.get_task("plan").downstream_task_ids == {"plan_json", "train_in_venv"}
    assert dag.get_task("choose_runner").downstream_task_ids == {"train_in_venv", "train_on_gke_tpu"}
    assert dag.get_task("plan").tpu is True  # declared: the TPU host, not the Airflow worker
    pod = dag.get_task("train_on_gke_tpu")
    assert type(pod).__name__ == "KubernetesPodOperator"
    assert pod.node_selector["cloud.google.com/gke-tpu-accelerator"]
    assert pod.container_resources.limits == {"google.com/tpu": "8"}
    assert dag.params.dump()["runner"] == "gke"


# -- the environment: a gs:// cache TensorFlow can read, and a venv without Airflow -----------------------------


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TFGCS]:
    with tf_gcs(tmp_path_factory.mktemp("tf-gcs-tpu-dag")) as env:
        env.emulator.create_bucket(BUCKET)
        yield env


def gcs_env(gcs: TFGCS) -> dict[str, str]:
    """For the python client (stage, pull: the emulator) and for TensorFlow (the relay), in one process tree."""
    return {**gcs.env, **gcs.emulator.env()}


@pytest.fixture(scope="module")
def training_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A venv with only ``tfhub-cache[tensorflow]`` (and what it needs), pinned to this venv's versions."""
    return build_training_venv(tmp_path_factory.mktemp("training-venv"))


def test_the_venv_variant_pulls_into_a_local_dir_and_trains_without_airflow(
    hub_server: Any, gcs: TFGCS, training_python: str, tmp_path: Path
) -> None:
    handle = f"{hub_server.url}/google/small_a/1"
    cache = f"gs://{BUCKET}/cache-venv"
    base = {"handle": handle, "cache_dir": cache, "runner": "venv"}
    confs = [
        {**base, "local_cache": str(tmp_path / "declared"), "training_tpu": "true"},
        {**base, "local_cache": str(tmp_path / "detected"), "training_tpu": "auto"},
    ]

    declared, detected = run_dag(confs, {**gcs_env(gcs), "TFHUB_TRAINING_PYTHON": training_python})

    for run in (declared, detected):
        assert run["state"] == "success", run["log"]
        assert run["tasks"]["train_in_venv"] == "success" and run["tasks"]["train_on_gke_tpu"] == "skipped"
    stage, plan = declared["xcom"]["stage"], declared["xcom"]["plan"]
    assert stage["path"].startswith(cache) and plan["path"] == stage["path"]
    assert plan["tpu"] is True and plan["load_options"] == {}  # gs:// on a TPU: the workers read it
    assert plan["smoke_test"]["called"] is True

    trained = declared["xcom"]["train_in_venv"]
    assert trained["airflow_importable"] is False
    assert trained["python"] == os.path.realpath(training_python)
    assert trained["path"].startswith(str(tmp_path / "declared")) and trained["revision"] == stage["revision"]
    assert trained["tpu"] is True and trained["load_options"] == IO_DEVICE_OPTIONS  # /job:localhost applied
    assert trained["strategy"] != "TPUStrategy"  # declared, but this CPU host has none to connect to
    assert len(trained["losses"]) == 2 and all(math.isfinite(x) and x > 0 for x in trained["losses"])
    assert (tmp_path / "declared").is_dir()

    auto = detected["xcom"]["train_in_venv"]
    assert auto["tpu"] is False and auto["load_options"] == {} and auto["revision"] == stage["revision"]
    assert auto["path"].startswith(str(tmp_path / "detected"))


# -- the pod variant: its rendered pod, as the Kubernetes API server would receive it ----------------------------


class PodRecorder(http.server.ThreadingHTTPServer):
    """Loopback stand-in for the Kubernetes API: records pod creations, lists no pods, refuses the rest."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _RecorderHandler)


class _RecorderHandler(http.server.BaseHTTPRequestHandler):
    server: PodRecorder

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.created.append(json.loads(self.rfile.read(length) or b"{}"))
        self._send(
            403,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": "Forbidden",
                "code": 403,
                "message": "pods are recorded, not run, by this test",
            },
        )

    def do_DELETE(self) -> None:
        self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})

    do_PATCH = do_PUT = do_DELETE


@pytest.fixture
def kube_api(tmp_path: Path) -> Iterator[tuple[PodRecorder, Path]]:
    recorder = PodRecorder()
    thread = threading.Thread(target=recorder.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    server = f"http://127.0.0.1:{recorder.server_address[1]}"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "recorder", "cluster": {"server": server}}],
                "users": [{"name": "test", "user": {"token": "test-token"}}],
                "contexts": [{"name": "recorder", "context": {"cluster": "recorder", "user": "test"}}],
                "current-context": "recorder",
            }
        )
    )
    try:
        yield recorder, kubeconfig
    finally:
        recorder.shutdown()
        recorder.server_close()


def test_the_pod_variant_renders_the_plan_and_the_tpu_resource(
    hub_server: Any, gcs: TFGCS, kube_api: tuple[PodRecorder, Path]
) -> None:
    recorder, kubeconfig = kube_api
    handle = f"{hub_server.url}/google/small_b/1"
    cache = f"gs://{BUCKET}/cache-pod"

    (run,) = run_dag(
        [{"handle": handle, "cache_dir": cache, "runner": "gke"}],
        {**gcs_env(gcs), "KUBECONFIG": str(kubeconfig), "TFHUB_TPU_CHIPS": "4", "TFHUB_TPU_TOPOLOGY": "2x2"},
    )

    assert run["tasks"]["train_in_venv"] == "skipped" and run["tasks"]["stage"] == "success", run["log"]
    assert recorder.created, run["log"]
    pod = recorder.created[0]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    plan = loading.plan_from_json(env["TFHUB_LOAD_PLAN"])
    assert plan["tpu"] is True and plan["revision"] == run["xcom"]["stage"]["revision"]
    assert plan["path"] == run["xcom"]["stage"]["path"] and plan["cache_dir"] == cache
    assert env["TFHUB_LOCAL_CACHE"]
    assert container["resources"]["limits"] == {"google.com/tpu": "4"}
    assert container["resources"]["requests"] == {"google.com/tpu": "4"}
    assert pod["spec"]["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "2x2",
    }
    assert container["command"] == ["python", "-c"] and "def train_head(" in container["args"][0]


NO_KUBERNETES_SCRIPT = """
import json, runpy, sys
sys.modules["airflow.providers.cncf.kubernetes.operators.pod"] = None  # as if the extra were not installed
dag = runpy.run_path(sys.argv[1])["dag"]
print("RESULT " + json.dumps({t.task_id: type(t).__name__ for t in dag.tasks}))
"""


def test_the_dag_parses_without_the_kubernetes_provider() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", NO_KUBERNETES_SCRIPT, str(ROOT / "dags" / "tfhub_tpu_training.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tasks = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert set(tasks) == set(TASKS) and tasks["train_on_gke_tpu"] != "KubernetesPodOperator"
