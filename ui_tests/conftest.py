"""``make test-ui``: Airflow's real UI (api-server on 127.0.0.1, SQLite, a temp AIRFLOW_HOME) in headless Chromium.

Session fixtures, in order: a migrated metadata DB; the api-server, started at once; while it boots,
a finished ``tfhub_prestage`` run whose mapped ``stage`` tasks staged two models from the loopback
hub (run by ``dag.test()`` in a subprocess, so the run is real and no scheduler is needed); a
Chromium driven by Selenium. The runs whose task logs are looked at (a mapped bad handle, the TPU
example on its venv runner against a ``gs://`` emulator) use ``dag.test(use_executor=True)``: the
LocalExecutor runs each task in Airflow's supervisor, which writes the log file the UI shows and
captures the task's raw stderr as a real deployment does. Every process started here is stopped by
its PID (its process group) at the end. Screenshots go to ``ui_tests/screenshots/`` (git-ignored).
``TFHUB_UI_KEEP_HOME=1`` keeps the temporary AIRFLOW_HOME (task logs, DAG-run logs) for a look after a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tfhub_cache.testing.models import build_archives_in_subprocess

ROOT = Path(__file__).resolve().parents[1]
# tls_relay and training_venv are shared with the main suite; appended, so its conftest cannot shadow this one.
sys.path.append(str(ROOT / "tests"))
SCREENSHOTS = Path(os.environ.get("TFHUB_UI_SCREENSHOTS", ROOT / "ui_tests" / "screenshots"))
MODELS_CACHE = ROOT / ".cache" / "ui-test-models"
CHROMIUM = os.environ.get("TFHUB_UI_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TFHUB_UI_CHROMEDRIVER", "/usr/bin/chromedriver")
#: the demo hub's model paths -> build_saved_model kwargs (the labels the grid must show follow from these)
MODELS = {"/demo/text-embedder/1": {"scale": 2.0, "offset": 1.0}, "/demo/image-features/1": {"scale": 0.5}}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dags_folder(home: str) -> str:
    """A copy of the example DAGs: ``dag.test()`` runs only DAGs of a configured bundle."""
    folder = Path(home) / "dags"
    shutil.copytree(ROOT / "dags", folder, ignore=shutil.ignore_patterns("__pycache__"))
    return str(folder)


@pytest.fixture(scope="session")
def airflow_env() -> Iterator[dict[str, str]]:
    home = tempfile.mkdtemp(prefix="tfhub-ui-airflow-")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TFHUB_"))}
    env.update(
        {
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": _dags_folder(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(16).hex(),  # the executor's and the api-server's
            "NO_GCE_CHECK": "true",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
    )
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)  # only this run's pictures
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield env
    finally:
        if os.environ.get("TFHUB_UI_KEEP_HOME"):  # to read the task logs of a failed run
            print(f"AIRFLOW_HOME kept: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def _build_archives() -> dict[str, Path]:
    """The demo SavedModels (TensorFlow, in a subprocess, cached between runs) -> archive paths."""
    built = build_archives_in_subprocess(MODELS_CACHE, {p.strip("/").replace("/", "-"): kw for p, kw in MODELS.items()})
    return {p: built[p.strip("/").replace("/", "-")] for p in MODELS}


RUN_DAG = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
conf = json.loads(sys.argv[1])
dag_id, use_executor = conf.pop("dag_id", "tfhub_prestage"), conf.pop("use_executor", False)
dag = DagBag(dag_folder=conf.pop("dags_folder")).get_dag(dag_id)
dr = dag.test(run_conf=conf, use_executor=use_executor)
print("RESULT " + json.dumps({"run_id": dr.run_id, "state": str(dr.state)}))
"""


def run_dag(env: dict[str, str], conf: dict[str, Any], log_name: str) -> dict[str, Any]:
    """``dag.test()`` in a subprocess with ``conf`` (plus the keys RUN_DAG pops) -> its run id and state."""
    log = Path(env["AIRFLOW_HOME"]) / log_name
    with open(log, "w") as out:
        subprocess.run(
            [sys.executable, "-c", RUN_DAG, json.dumps(conf)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=600,
        )
    lines = [line for line in log.read_text().splitlines() if line.startswith("RESULT ")]
    assert lines, f"dag.test() did not finish; see the end of its log:\n{log.read_text()[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    result["log"] = str(log)
    return result


@pytest.fixture(scope="session")
def mapped_run(
    airflow_env: dict[str, str], api_server_process: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A finished ``tfhub_prestage`` run: its mapped ``stage`` staged the demo models from the loopback hub."""
    from tfhub_cache.testing.hub import HubServer

    archives = _build_archives()
    hub = HubServer().start()
    try:
        handles = [hub.add_model(path, archives[path]) for path in MODELS]
        conf = {
            "handles": handles,
            "cache_dir": str(tmp_path_factory.mktemp("cache")),
            "dags_folder": airflow_env["AIRFLOW__CORE__DAGS_FOLDER"],
        }
        result = run_dag(airflow_env, conf, "dag-test.log")
    finally:
        hub.stop()
    assert result["state"] == "success", Path(result["log"]).read_text()[-3000:]
    result["handles"] = handles
    return result


@pytest.fixture(scope="session")
def api_server_process(airflow_env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``airflow api-server`` on 127.0.0.1 (one worker), started early: it boots while the DAG runs."""
    with open(Path(airflow_env["AIRFLOW_HOME"]) / "api-server.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", "api-server", "-H", "127.0.0.1", "-p", airflow_env["AIRFLOW__API__PORT"]],
            env=airflow_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: its workers are stopped with it, by this PID
        )
    try:
        yield proc
    finally:
        _stop_group(proc)


@pytest.fixture(scope="session")
def api_server(
    airflow_env: dict[str, str], api_server_process: subprocess.Popen[bytes], mapped_run: dict[str, Any]
) -> str:
    """The api-server's base URL once it answers (and the mapped run it shows has finished)."""
    base = f"http://127.0.0.1:{airflow_env['AIRFLOW__API__PORT']}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=5) as resp:
                if resp.status == 200:
                    return base
        except (urllib.error.URLError, OSError):
            pass
        if api_server_process.poll() is not None or time.monotonic() > deadline:
            text = (Path(airflow_env["AIRFLOW_HOME"]) / "api-server.log").read_text()
            pytest.fail(f"api-server did not come up on {base}:\n{text[-3000:]}")
        time.sleep(1)


#: A handle without its version: the mapped stage task can only see it at run time (it comes from conf).
BAD_HANDLE = "https://tfhub.dev/google/nnlm-en-dim50"


@pytest.fixture(scope="session")
def bad_handle_run(
    api_server: str, airflow_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A finished ``tfhub_prestage`` run whose only mapped ``stage`` task got a handle without a version."""
    conf = {
        "dag_id": "tfhub_prestage",
        "use_executor": True,
        "handles": [BAD_HANDLE],
        "cache_dir": str(tmp_path_factory.mktemp("bad-cache")),
        "dags_folder": airflow_env["AIRFLOW__CORE__DAGS_FOLDER"],
    }
    result = run_dag(airflow_env, conf, "dag-test-bad-handle.log")
    assert result["state"] == "failed", Path(result["log"]).read_text()[-3000:]
    result["handle"] = BAD_HANDLE
    return result


#: The TPU example's tasks; ``train_on_gke_tpu`` is skipped on the venv runner.
TPU_EXAMPLE_TASKS = ("stage", "plan", "plan_json", "choose_runner", "train_in_venv")


@pytest.fixture(scope="session")
def tpu_example_run(
    api_server: str, airflow_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A finished run of ``dags/tfhub_tpu_training.py`` as shipped, on its venv runner, TensorFlow not told to be quiet.

    Production-shaped on loopback: ``stage`` puts the model into a ``gs://`` cache (fake-gcs-server,
    which stock TensorFlow reaches through the TLS relay of ``tests/tls_relay.py``), ``plan`` plans for a
    declared TPU and smoke-loads from ``gs://``, ``train_in_venv`` pulls the revision to a local dir and
    trains in a venv holding ``tfhub-cache[tensorflow]`` and ``pendulum``, as the docs advise, and no
    Airflow (``TFHUB_TRAINING_PYTHON``).
    """
    from tls_relay import tf_gcs
    from training_venv import build_training_venv

    from tfhub_cache.testing.hub import HubServer

    archives = _build_archives()
    path = next(iter(MODELS))
    python = build_training_venv(tmp_path_factory.mktemp("training"), also=("pendulum",))  # as the docs say
    with tf_gcs(tmp_path_factory.mktemp("tf-gcs")) as gcs:
        gcs.emulator.create_bucket("ui-tpu")
        env = {k: v for k, v in airflow_env.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # what a deployment has
        env.update({**gcs.env, **gcs.emulator.env(), "TFHUB_TRAINING_PYTHON": python})
        hub = HubServer().start()
        try:
            conf = {
                "dag_id": "tfhub_tpu_training",
                "use_executor": True,
                "handle": hub.add_model(path, archives[path]),
                "cache_dir": "gs://ui-tpu/tfhub-modules",
                "runner": "venv",
                "local_cache": str(tmp_path_factory.mktemp("tpu-host-cache")),
                "training_tpu": "true",
                "dags_folder": env["AIRFLOW__CORE__DAGS_FOLDER"],
            }
            result = run_dag(env, conf, "dag-test-tpu-example.log")
        finally:
            hub.stop()
        assert result["state"] == "success", Path(result["log"]).read_text()[-3000:]
        yield result


def _stop_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group led by ``proc`` (we started it with start_new_session), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; its workers may still be exiting
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(1)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, name: str) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
