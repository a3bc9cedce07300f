"""The event triggers under a real triggerer: Airflow's own dag-processor, triggerer and scheduler.

They run as subprocesses on SQLite in a temporary AIRFLOW_HOME, with a DAGs folder of two DAGs:
``refresh`` scheduled on an Asset watched by ``TFHubUpstreamChangedTrigger`` and ``consumer`` on an
Asset watched by ``TFHubRevisionPublishedTrigger``, both pointed at the loopback hub and a temp
cache. What counts is the DAG runs the scheduler creates from the watchers' events (read from the
metadata DB); the runs' tasks are not the subject here (the DAGs hold one empty task each).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_tfhub.triggers.events import REVISION_KEY, UPSTREAM_KEY
from tfhub_cache.cache.staging import stage

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
PATH = "/google/evented/1"

DAGS = """
from datetime import datetime

from airflow.sdk import DAG, Asset, AssetWatcher
from airflow.providers.standard.operators.empty import EmptyOperator

from airflow_provider_tfhub.triggers import TFHubRevisionPublishedTrigger, TFHubUpstreamChangedTrigger

HANDLE, CACHE = {handle!r}, {cache!r}
upstream = Asset(name="upstream", watchers=[AssetWatcher(
    name="upstream", trigger=TFHubUpstreamChangedTrigger(HANDLE, cache_dir=CACHE, poll_interval=1))])
published = Asset(name="published", watchers=[AssetWatcher(
    name="published", trigger=TFHubRevisionPublishedTrigger(HANDLE, cache_dir=CACHE, poll_interval=1))])

for dag_id, asset in (("refresh", upstream), ("consumer", published)):
    with DAG(dag_id=dag_id, schedule=[asset], start_date=datetime(2026, 1, 1), catchup=False):
        EmptyOperator(task_id="work")
"""


class Airflow:
    """Airflow components as subprocesses sharing one temporary AIRFLOW_HOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.db = home / "airflow.db"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db}",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "2",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, *args: str) -> None:
        subprocess.run([AIRFLOW, *args], env=self.env, check=True, capture_output=True, timeout=300)

    def start(self, name: str, *args: str) -> None:
        log = open(self.home / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [AIRFLOW, name, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def wait_log(self, name: str, text: str, count: int, timeout: float = 180) -> None:
        """Until ``text`` appears ``count`` times in component ``name``'s log (all its starts)."""
        deadline = time.monotonic() + timeout
        while (self.home / f"{name}.log").read_text(errors="replace").count(text) < count:
            assert time.monotonic() < deadline, f"{text!r} not {count} times in the {name} log"
            time.sleep(0.5)

    def runs(self, dag_id: str) -> int:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30) as db:
            (count,) = db.execute("SELECT count(*) FROM dag_run WHERE dag_id = ?", (dag_id,)).fetchone()
        return int(count)

    def state(self) -> dict[str, str]:
        """The asset state store's keys and values (the watchers' watermarks), from the metadata DB."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30) as db:
            return dict(db.execute("SELECT key, value FROM asset_state_store").fetchall())

    def wait_runs(self, dag_id: str, count: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while self.runs(dag_id) < count:
            if time.monotonic() > deadline:
                logs = {p.name: p.read_text(errors="replace")[-3000:] for p in self.home.glob("*.log")}
                raise AssertionError(f"{dag_id} has {self.runs(dag_id)} runs, expected {count}; logs: {logs}")
            time.sleep(0.5)


@pytest.fixture
def airflow(tmp_path: Path) -> Iterator[Airflow]:
    home = tmp_path / "airflow"
    (home / "dags").mkdir(parents=True)
    af = Airflow(home)
    af.run("db", "migrate")
    yield af
    for name in list(af.procs):
        af.stop(name)


def test_watchers_start_each_dag_once_per_change_across_a_triggerer_restart(
    hub: Any, airflow: Airflow, model_archives: dict[str, Any], tmp_path: Path
) -> None:
    handle = hub.add_model(PATH, model_archives["demo_v1"])
    cache = str(tmp_path / "cache")
    first = stage(handle, cache)
    (airflow.home / "dags" / "watched.py").write_text(textwrap.dedent(DAGS.format(handle=handle, cache=cache)))
    for name in ("dag-processor", "triggerer", "scheduler"):
        airflow.start(name)

    airflow.wait_runs("consumer", 1)  # the revision the watcher found when it started
    time.sleep(5)
    assert airflow.runs("refresh") == 0  # upstream unchanged: nothing to refresh

    hub.add_model(PATH, model_archives["demo_v2"])  # upstream publishes a new version
    airflow.wait_runs("refresh", 1)
    time.sleep(6)  # several polls while it stays changed (and not staged)
    assert airflow.runs("refresh") == 1

    airflow.stop("triggerer")
    airflow.start("triggerer")
    for trigger_id in (1, 2):  # both watchers run again in the new triggerer, without their memory
        airflow.wait_log("triggerer", f"trigger ID {trigger_id} starting", 2)
    time.sleep(6)  # several polls; upstream is still changed: the watermarks are in the asset state store
    assert airflow.runs("refresh") == 1 and airflow.runs("consumer") == 1
    kept = airflow.state()
    assert str(first["revision"]) in kept[REVISION_KEY] and kept[UPSTREAM_KEY]  # what the watchers fired last

    second = stage(handle, cache, refresh="if_changed")  # the refresh publishes a revision
    assert second["revision"] != first["revision"]
    airflow.wait_runs("consumer", 2)
    time.sleep(5)
    assert airflow.runs("consumer") == 2 and airflow.runs("refresh") == 1
