"""A real multi-worker Airflow cluster on 127.0.0.1, one DAG run through it, and the checks on the result.

Why real processes rather than ``dag.test()``: what a shared ``gs://`` cache must survive only happens
with separate worker processes racing for one handle, a triggerer polling the bucket from its own
event loop, and the scheduler, Celery and the Execution API in between. So this starts PostgreSQL,
Redis, fake-gcs-server, the loopback hub, ``airflow api-server``, ``scheduler``, ``dag-processor``,
``triggerer`` and two ``airflow celery worker`` processes (CeleryExecutor), triggers
``tfhub_cluster_check`` (8 mapped stage tasks: one handle four times plus four others, and a
deferrable sensor) and then ``tfhub_prestage`` (the example DAG; every model is a cache hit by then).
Meanwhile ``tfhub_cluster_published`` waits on an asset watched by ``TFHubRevisionPublishedTrigger``
(the shared handle, in the bucket): nobody triggers it.

Checks: every task succeeded; the hub served each archive exactly once; every task of one handle
returned the same path and exactly one of them downloaded; the sensor deferred and returned that
path; both workers ran tasks; the watcher started ``tfhub_cluster_published`` exactly once, with
the revision the stagers published (and not again for the example DAG's cache hits); the bucket
holds exactly the published entries (no lock, no temp object); no DAG import errors.

Run it through ``tests/cluster/run.sh`` (``make test-cluster``), which installs PostgreSQL/Redis and
the Celery provider first and kills whatever is left in ``--pidfile`` when this exits. Every process
is started in its own session and stopped by its process-group id; nothing is killed by name.
Stdlib only (plus ``psycopg2`` for the readiness probe, ``cryptography`` for a Fernet key and the
``airflow_provider_tfhub`` testing helpers), so it imports neither Airflow nor TensorFlow itself.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tfhub_cache.testing.hub import HubControl
from tfhub_cache.testing.models import build_archives_in_subprocess

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_DAG_DIR = Path(__file__).resolve().parent / "dags"
CHECK_DAG = "tfhub_cluster_check"
WATCHED_DAG = "tfhub_cluster_published"
EXAMPLE_DAG = "tfhub_prestage"
BUCKET = "tfhub-cache"
PREFIX = "models"
CACHE_DIR = f"gs://{BUCKET}/{PREFIX}"
MODELS = {  # name -> build_saved_model kwargs; distinct weights so every archive has its own sha256
    "model-a": {"scale": 2.0, "offset": 1.0},
    "model-b": {"scale": 3.0, "offset": 0.0},
    "model-c": {"scale": 0.5, "offset": -1.0},
    "model-d": {"scale": -1.0, "offset": 4.0},
    "model-e": {"scale": 10.0, "offset": 0.25},
}
SHARED = "model-a"
SHARED_DELAY_S = 3.0
"""Delay before the shared archive's body, so the four stagers of model-a really overlap on the lock."""
WORKERS = ("worker1", "worker2")
WORKER_CONCURRENCY = 4
ADMIN_USER = "admin"


class ClusterError(Exception):
    """Setup or a component failed; the message says which and the caller prints the logs."""


def log(message: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- processes ------------------------------------------------------------------------------------------


@dataclass
class Component:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    group: bool = True  # signal the whole process group (False: only the leader, e.g. the postmaster)
    tier: int = 0  # stopped from the highest tier down: 2 workers, 1 other Airflow components, 0 services
    stop_timeout: float = 30.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@dataclass
class Cluster:
    work: Path
    pidfile: Path
    components: list[Component] = field(default_factory=list)

    @property
    def log_dir(self) -> Path:
        return self.work / "logs"

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        stdout_pipe: bool = False,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
        group: bool = True,
        tier: int = 0,
        cwd: Path | None = None,
    ) -> Component:
        """Start ``argv`` in a new session (its pid is its process-group id) and record the pid."""
        log_path = self.log_dir / f"{name}.log"
        handle: IO[bytes] = open(log_path, "ab")  # the child keeps its own copy
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else handle,
                stderr=handle,
                env=env,
                cwd=str(cwd or self.work),
                start_new_session=True,
                user=user,
                group=user,
                close_fds=True,
            )
        finally:
            handle.close()
        with open(self.pidfile, "a") as pids:
            pids.write(f"{proc.pid} {name}\n")
        component = Component(name, proc, log_path, stop_signal=stop_signal, group=group, tier=tier)
        self.components.append(component)
        return component

    def check_alive(self) -> None:
        for component in self.components:
            if not component.alive():
                raise ClusterError(f"{component.name} (pid {component.pid}) exited with {component.proc.returncode}")

    def stop(self) -> None:
        """Stop tier by tier (workers, then the other Airflow components, then the services they use).

        Within a tier: signal everyone, wait, then SIGKILL the process group (the leader may be gone
        while children it forked, such as task runners or pool processes, remain). Never raises.
        """
        for tier in sorted({c.tier for c in self.components}, reverse=True):
            members = [c for c in reversed(self.components) if c.tier == tier]
            for component in members:
                if component.alive():
                    _signal(component, component.stop_signal)
            deadline = time.monotonic() + max(c.stop_timeout for c in members)
            for component in members:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    component.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(component.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    component.proc.wait(timeout=5)
                if component.proc.stdout is not None:
                    component.proc.stdout.close()

    def tails(self, lines: int = 40) -> str:
        parts = []
        for component in self.components:
            parts.append(f"----- {component.name} (pid {component.pid}) {component.log_path} -----")
            parts.append(component.tail(lines))
        return "\n".join(parts)


def _signal(component: Component, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if component.group:
            os.killpg(component.pid, sig)
        else:
            os.kill(component.pid, sig)


def wait_for(what: str, probe: Callable[[], Any], timeout: float, cluster: Cluster, interval: float = 0.5) -> Any:
    """Poll ``probe`` until it returns something truthy; fail early if any component died."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        cluster.check_alive()
        try:
            result, last = probe(), None
        except Exception as exc:  # a probe failing is "not yet"
            result, last = None, exc
        if result:
            return result
        if time.monotonic() > deadline:
            raise ClusterError(
                f"timed out after {timeout:g} s waiting for {what}" + (f" (last error: {last})" if last else "")
            )
        time.sleep(interval)


def log_says(path: Path, text: str) -> bool:
    return text in path.read_text(errors="replace")


def read_ready_line(component: Component, timeout: float) -> str:
    """The ``READY <url>`` line a testing server prints on stdout once it listens."""
    assert component.proc.stdout is not None
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(component.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    line = box[0].decode().strip() if box else ""
    if not line.startswith("READY "):
        raise ClusterError(f"{component.name} did not print READY within {timeout:g} s (got {line!r})")
    return line.split(" ", 1)[1]


# -- services -------------------------------------------------------------------------------------------


def postgres_bindir() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not candidates:
        found = shutil.which("initdb")
        if found:
            return Path(found).parent
        raise ClusterError("PostgreSQL is not installed (no initdb); run tests/cluster/run.sh, which installs it")
    return candidates[-1].parent


def start_postgres(cluster: Cluster) -> str:
    """initdb + postmaster on 127.0.0.1 as the ``postgres`` user (root) or as ourselves; returns the DSN."""
    bindir = postgres_bindir()
    base = cluster.work / "postgres"
    data, sockets = base / "data", base / "sockets"
    sockets.mkdir(parents=True)
    user = "postgres" if os.geteuid() == 0 else None  # the postmaster refuses to run as root
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise ClusterError(
                "running as root needs the 'postgres' system user (Debian's postgresql creates it)"
            ) from None
        shutil.chown(base, user, user)
        shutil.chown(sockets, user, user)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    init = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        user=user,
        group=user,
        env=env,
        cwd=str(base),
        capture_output=True,
        text=True,
    )
    if init.returncode != 0:
        raise ClusterError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
    port = free_port()
    # Throwaway database: durability off. Each Airflow component holds a pool, so allow plenty of connections.
    argv = [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(sockets)]
    for setting in ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=300"):
        argv += ["-c", setting]
    # SIGINT = "fast" shutdown of the postmaster, which then stops its own backends.
    cluster.spawn("postgres", argv, env=env, user=user, stop_signal=signal.SIGINT, group=False, cwd=base)
    import psycopg2  # installed by run.sh into the venv

    def connect() -> bool:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=2)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE airflow")
        conn.close()
        return True

    wait_for("postgres", connect, 60, cluster)
    return f"postgres@127.0.0.1:{port}/airflow"


def start_redis(cluster: Cluster) -> str:
    port = free_port()
    server = shutil.which("redis-server")
    if not server:
        raise ClusterError("redis-server is not installed; run tests/cluster/run.sh, which installs it")
    rdir = cluster.work / "redis"
    rdir.mkdir()
    argv = [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(rdir)]
    cluster.spawn("redis", argv, env={"PATH": os.environ.get("PATH", "")})

    def ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    wait_for("redis", ping, 30, cluster)
    return f"redis://127.0.0.1:{port}/0"


def build_models(cache_root: Path, hub_root: Path) -> dict[str, Path]:
    """Build the SavedModel archives once (cached between runs) in a subprocess: TensorFlow stays out of here."""
    try:
        built = build_archives_in_subprocess(cache_root, MODELS)
    except RuntimeError as exc:
        raise ClusterError(str(exc)) from exc
    archives = {}
    for name, path in built.items():
        dest = hub_root / "cluster" / name / "1.tar.gz"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        archives[name] = dest
    return archives


# -- Airflow --------------------------------------------------------------------------------------------


def airflow_env(
    *, home: Path, dags: Path, pg: str, broker: str, api_port: int, gcs_endpoint: str, passwords: Path, watched: str
) -> dict[str, str]:
    from cryptography.fernet import Fernet  # an Airflow dependency

    venv_bin = str(Path(sys.executable).parent)
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TFHUB_", "STORAGE_EMULATOR"))}
    return {
        **keep,
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Paused stays the default: the scheduled example DAGs must not run (their handles are real tfhub.dev
        # models); only the DAGs this harness triggers get unpaused.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{pg}",
        "AIRFLOW__CELERY__BROKER_URL": broker,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{pg}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
        # Every component must sign and check Execution-API and log-server tokens with the same keys.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW_CONN_TFHUB_DEFAULT": json.dumps({"conn_type": "tfhub", "extra": {"cache_dir": CACHE_DIR}}),
        "STORAGE_EMULATOR_HOST": gcs_endpoint,
        "TFHUB_CLUSTER_WATCHED_HANDLE": watched,  # read by tests/cluster/dags/tfhub_cluster_published.py
        "NO_GCE_CHECK": "true",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
    }


class Api:
    """The public REST API of ``airflow api-server`` (v2), authenticated like a user would."""

    def __init__(self, base: str, password: str) -> None:
        self.base = base
        self.password = password
        self.token: str | None = None

    def _request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.login()}"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise ClusterError(f"{method} {path} -> {exc.code}: {exc.read()[:500]!r}") from exc
        return json.loads(raw) if raw else None

    def login(self) -> str:
        if self.token is None:
            answer = self._request(
                "POST", "/auth/token", {"username": ADMIN_USER, "password": self.password}, auth=False
            )
            self.token = str(answer["access_token"])
        return self.token

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self._request("POST", path, body)

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any]) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        self.post(f"/api/v2/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None, "conf": conf})

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.get(f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}")["state"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        answer = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances?limit=100")
        return list(answer["task_instances"])

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"])

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/{task_id}"
            f"/xcomEntries/return_value?map_index={map_index}"
        )
        value = self.get(path)["value"]
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return json.loads(value)
        return value


def run_dag(api: Api, cluster: Cluster, dag_id: str, run_id: str, conf: dict[str, Any], timeout: float) -> str:
    api.trigger(dag_id, run_id, conf)
    log(f"triggered {dag_id} run {run_id}")
    state = wait_for(
        f"{dag_id} run {run_id} to finish",
        lambda: (s := api.run_state(dag_id, run_id)) in ("success", "failed") and s,
        timeout,
        cluster,
        interval=2,
    )
    log(f"{dag_id} run {run_id}: {state}")
    return str(state)


# -- checks ---------------------------------------------------------------------------------------------


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # informative only, never a pass/fail criterion

    def check(self, ok: bool, message: str) -> None:
        (self.facts if ok else self.failures).append(("ok: " if ok else "FAIL: ") + message)

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """A check that cannot even be evaluated (API error, missing XCom) fails; the others still run."""
        try:
            yield
        except Exception as exc:
            self.failures.append(f"FAIL: {what}: {type(exc).__name__}: {exc}")


def check_task_instances(report: Report, tis: list[dict[str, Any]], expected: dict[str, int], dag_id: str) -> None:
    counts = Counter(ti["task_id"] for ti in tis)
    for task_id, n in expected.items():
        report.check(counts[task_id] == n, f"{dag_id}: {counts[task_id]} instance(s) of {task_id}, expected {n}")
    bad = [f"{ti['task_id']}[{ti['map_index']}]={ti['state']}" for ti in tis if ti["state"] != "success"]
    report.check(not bad, f"{dag_id}: every task instance succeeded" + (f" (not: {', '.join(bad)})" if bad else ""))


def check_staged(report: Report, staged: list[tuple[str, dict[str, Any]]], dag_id: str, *, downloads: int) -> None:
    """Every task of one handle returned the same path; ``downloads`` of them per handle downloaded."""
    by_handle: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for handle, result in staged:
        by_handle[handle].append(result)
    for handle, results in by_handle.items():
        paths = {r.get("path") for r in results}
        key = hashlib.sha1(handle.encode()).hexdigest()
        want = f"{CACHE_DIR}/{key}.revisions/"  # one immutable revision of the entry, the same for all
        report.check(
            len(paths) == 1 and str(next(iter(paths))).startswith(want),
            f"{dag_id}: {len(results)} task(s) of {handle} returned one revision path {sorted(map(str, paths))}",
        )
        got = sum(1 for r in results if r.get("downloaded"))
        report.check(got == downloads, f"{dag_id}: {got} of {len(results)} task(s) of {handle} downloaded")
        report.check(all(r.get("handle") == handle for r in results), f"{dag_id}: XCom handle of {handle} matches")


def overlap_fact(tis: list[dict[str, Any]], staged: list[tuple[str, dict[str, Any]]], handle: str) -> str:
    """How many stagers of ``handle`` ran while its downloader did: informative, not asserted (timing)."""
    from datetime import datetime

    spans = {ti["map_index"]: ti for ti in tis if ti["task_id"] == "stage"}
    mine = [i for i, (h, _) in enumerate(staged) if h == handle]
    winner = next((i for i in mine if staged[i][1].get("downloaded")), None)
    if winner is None or any(not spans.get(i, {}).get("start_date") for i in mine):
        return f"info: overlap of the {len(mine)} stagers of {handle} unknown"

    def span(i: int) -> tuple[datetime, datetime]:
        return datetime.fromisoformat(spans[i]["start_date"]), datetime.fromisoformat(spans[i]["end_date"])

    w_start, w_end = span(winner)
    waiting = sum(1 for i in mine if i != winner and span(i)[0] < w_end and span(i)[1] > w_start)
    return f"info: {waiting} of {len(mine) - 1} other stagers of {handle} ran while map_index {winner} downloaded"


def list_bucket(endpoint: str, bucket: str) -> list[str]:
    names: list[str] = []
    token = ""
    while True:
        query = urllib.parse.urlencode({"maxResults": 1000, **({"pageToken": token} if token else {})})
        with urllib.request.urlopen(f"{endpoint}/storage/v1/b/{bucket}/o?{query}", timeout=30) as response:
            page = json.loads(response.read())
        names += [item["name"] for item in page.get("items", [])]
        token = page.get("nextPageToken", "")
        if not token:
            return names


def check_bucket(report: Report, endpoint: str, handles: Iterable[str]) -> None:
    """Exactly the published entries: ``<key>/...`` (tensorflow_hub's view), ``<key>.revisions/...``,
    ``<key>.descriptor.txt``, ``<key>.meta.json``; one revision per entry, its marker present."""
    keys = {hashlib.sha1(h.encode()).hexdigest() for h in handles}
    names = list_bucket(endpoint, BUCKET)
    top = Counter(name.removeprefix(PREFIX + "/").split("/", 1)[0] for name in names)
    expected = {k for key in keys for k in (key, f"{key}.revisions", f"{key}.descriptor.txt", f"{key}.meta.json")}
    # The alias index (``.alias.<sha1(url)>.<sha1(handle)>.json``) names entries of this cache only.
    index = {n for n in top if n.startswith(".alias.") and n.endswith(".json") and n.split(".")[3] in keys}
    leftovers = sorted(set(top) - expected - index)
    missing = sorted(expected - set(top))
    report.check(
        not leftovers, "bucket: no lock, temp or stray object" + (f" (found {leftovers})" if leftovers else "")
    )
    report.check(not missing, "bucket: every entry published" + (f" (missing {missing})" if missing else ""))
    for key in sorted(keys):
        report.check(f"{PREFIX}/{key}/saved_model.pb" in names, f"bucket: {key}/saved_model.pb present")
        revisions = {n.split("/")[2] for n in names if n.startswith(f"{PREFIX}/{key}.revisions/") and n.count("/") >= 3}
        report.check(len(revisions) == 1, f"bucket: {key} has one revision (found {sorted(revisions)})")
    report.notes.append(f"info: bucket {BUCKET} holds {len(names)} objects for {len(keys)} entries")


def check_hub(report: Report, stats: dict[str, Any], archive_counts: dict[str, int]) -> None:
    models = stats.get("models", {})
    for path, expected in archive_counts.items():
        got = models.get(path, {}).get("archive_full", 0) + models.get(path, {}).get("archive_range", 0)
        report.check(got == expected, f"hub: {path} archive served {got} time(s), expected {expected}")


def check_watched(report: Report, api: Api, staged: list[tuple[str, dict[str, Any]]], handle: str) -> None:
    """One asset-triggered run of the watched DAG, whose event names the revision the stagers published."""
    runs = api.dag_runs(WATCHED_DAG)
    report.check(
        len(runs) == 1 and runs[0].get("run_type") == "asset_triggered",
        f"{WATCHED_DAG}: exactly one asset-triggered run (found {[(r['run_type'], r['state']) for r in runs]})",
    )
    if not runs:
        return
    run_id = runs[0]["dag_run_id"]
    report.check(runs[0]["state"] == "success", f"{WATCHED_DAG}: run state {runs[0]['state']}")
    got = api.xcom(WATCHED_DAG, run_id, "consume")
    path = next(r.get("path") for h, r in staged if h == handle)
    report.check(
        got.get("events") == 1 and got.get("handle") == handle and got.get("path") == path and got.get("revision")
        and f"/{got['revision']}" in str(path),
        f"{WATCHED_DAG}: one event, for revision {got.get('revision')} at {got.get('path')}, expected {path}",
    )  # fmt: skip


WORKLOAD_RE = re.compile(r"Executing workload in Celery: .*?task_id='(?P<task>[^']+)'.*?map_index=(?P<idx>-?\d+)")


def worker_tasks(cluster: Cluster) -> dict[str, list[str]]:
    """Which worker executed which task instance, from the Celery workers' own logs."""
    seen: dict[str, list[str]] = {}
    for component in cluster.components:
        if component.name in WORKERS:
            text = component.log_path.read_text(errors="replace")
            seen[component.name] = [f"{m['task']}[{m['idx']}]" for m in WORKLOAD_RE.finditer(text)]
    return seen


def sensor_deferral(home: Path, dag_id: str, run_id: str, task_id: str) -> tuple[bool, str]:
    """Whether the sensor went worker -> triggerer -> worker, from Airflow's own log lines.

    The task log says ``Pausing task as DEFERRED`` when the first poke found nothing; the trigger's log
    (``<attempt>.log.trigger.<id>.log``, written by the triggerer) says ``Trigger fired event``.
    """
    base = home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    task_log = "".join(p.read_text(errors="replace") for p in sorted(base.glob("attempt=*.log")))
    trigger_log = "".join(p.read_text(errors="replace") for p in sorted(base.glob("attempt=*.trigger.*.log")))
    deferred = "Pausing task as DEFERRED" in task_log
    fired = "Trigger fired event" in trigger_log
    return deferred and fired, f"task log deferral: {deferred}, trigger fired in the triggerer: {fired}"


# -- main -----------------------------------------------------------------------------------------------


def link_dags(dags: Path) -> list[str]:
    """The cluster DAG plus the repository's example DAGs, all parsed by the real dag-processor."""
    dags.mkdir()
    linked = []
    for source in sorted(CLUSTER_DAG_DIR.glob("*.py")) + sorted((ROOT / "dags").glob("*.py")):
        (dags / source.name).symlink_to(source)
        linked.append(source.name)
    return linked


def run(args: argparse.Namespace) -> int:
    work: Path = args.work
    cluster = Cluster(work=work, pidfile=args.pidfile)
    cluster.log_dir.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # the postgres user must reach its data dir below
    report = Report()
    started = time.monotonic()
    try:
        log(f"work dir {work}")
        archives = build_models(args.models_cache, work / "hub")
        log(f"built {len(archives)} SavedModel archives (cache {args.models_cache})")

        pg = start_postgres(cluster)
        log(f"postgres ready ({pg})")
        broker = start_redis(cluster)
        log(f"redis ready ({broker})")

        base_env = {**os.environ, "NO_GCE_CHECK": "true"}
        gcs_argv = [
            "-m",
            "tfhub_cache.testing.gcs_emulator",
            "--data",
            str(work / "gcs"),
            "--bucket",
            BUCKET,
        ]
        gcs = cluster.spawn(
            "gcs-emulator",
            [sys.executable, *gcs_argv],
            env=base_env,
            stdout_pipe=True,
        )
        gcs_endpoint = read_ready_line(gcs, 60)
        log(f"GCS emulator ready ({gcs_endpoint}, bucket {BUCKET})")
        hub_proc = cluster.spawn(
            "hub",
            [sys.executable, "-m", "tfhub_cache.testing.hub", "--root", str(work / "hub")],
            env=base_env,
            stdout_pipe=True,
        )
        hub_url = read_ready_line(hub_proc, 60)
        hub = HubControl(hub_url)
        handles = {name: f"{hub_url}/cluster/{name}/1" for name in MODELS}
        hub.set_faults(f"/cluster/{SHARED}/1", delay_s=SHARED_DELAY_S)
        log(f"hub ready ({hub_url}): {', '.join(hub.info()['models'])}")

        home = work / "airflow"
        home.mkdir()
        dags = work / "dags"
        linked = link_dags(dags)
        password = secrets.token_urlsafe(12)
        passwords = work / "passwords.json"
        passwords.write_text(json.dumps({ADMIN_USER: password}))
        api_port = free_port()
        env = airflow_env(
            home=home, dags=dags, pg=pg, broker=broker, api_port=api_port, gcs_endpoint=gcs_endpoint,
            passwords=passwords, watched=handles[SHARED],
        )  # fmt: skip
        airflow = str(Path(sys.executable).parent / "airflow")

        log("airflow db migrate")
        migrate = subprocess.run(
            [airflow, "db", "migrate"], env=env, cwd=str(work), capture_output=True, text=True, timeout=600
        )
        (cluster.log_dir / "db-migrate.log").write_text(migrate.stdout + migrate.stderr)
        if migrate.returncode != 0:
            raise ClusterError(f"airflow db migrate failed:\n{(migrate.stdout + migrate.stderr)[-4000:]}")

        api_argv = [airflow, "api-server", "-H", "127.0.0.1", "-p", str(api_port), "-w", "1"]
        cluster.spawn("api-server", api_argv, env=env, tier=1)
        cluster.spawn("scheduler", [airflow, "scheduler"], env=env, tier=1)
        cluster.spawn("dag-processor", [airflow, "dag-processor"], env=env, tier=1)
        # --skip-serve-logs: Airflow's log servers bind every interface (host ""), and all components share
        # this AIRFLOW_HOME, so the api-server reads task and trigger logs from disk anyway.
        cluster.spawn("triggerer", [airflow, "triggerer", "--skip-serve-logs"], env=env, tier=1)
        for name in WORKERS:
            argv = [airflow, "celery", "worker", "--celery-hostname", f"{name}@%h", "-c", str(WORKER_CONCURRENCY)]
            cluster.spawn(name, [*argv, "--skip-serve-logs"], env=env, tier=2)
        log("started api-server, scheduler, dag-processor, triggerer and 2 celery workers")

        api = Api(f"http://127.0.0.1:{api_port}", password)

        def healthy() -> bool:
            health = api.get("/api/v2/monitor/health")
            return all(
                (health.get(part) or {}).get("status") == "healthy"
                for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
            )

        wait_for("api-server, scheduler, triggerer and dag-processor to report healthy", healthy, 240, cluster, 2)
        for name in WORKERS:
            worker_log = next(c for c in cluster.components if c.name == name).log_path
            wait_for(f"{name} to be ready", functools.partial(log_says, worker_log, " ready."), 240, cluster, 1)
        log("all components healthy")

        wait_for(
            f"the dag-processor to serialize {CHECK_DAG}, {EXAMPLE_DAG} and {WATCHED_DAG}",
            lambda: all(api.get(f"/api/v2/dags/{d}") for d in (CHECK_DAG, EXAMPLE_DAG, WATCHED_DAG)),
            180,
            cluster,
            2,
        )
        # The watcher runs in the triggerer once the DAG it schedules is registered unpaused. Before the check DAG:
        # nothing is staged yet, so a run of the watched DAG can only come from a revision the workers publish.
        triggerer_log = next(c for c in cluster.components if c.name == "triggerer").log_path
        wait_for(
            f"the triggerer to start the watcher of {WATCHED_DAG}",
            lambda: re.search(r"trigger ID \d+ starting", triggerer_log.read_text(errors="replace")),
            180,
            cluster,
            1,
        )
        report.check(not api.dag_runs(WATCHED_DAG), f"{WATCHED_DAG}: no run before anything is published")
        errors = api.get("/api/v2/importErrors")
        report.check(
            errors["total_entries"] == 0,
            f"no DAG import errors among {', '.join(linked)}"
            + "".join(f"\n    {e['filename']}: {e['stack_trace'][-800:]}" for e in errors.get("import_errors", [])),
        )

        deadline = time.monotonic() + args.timeout
        # 1. The check DAG: four stagers race for model-a, four more stage one model each, one sensor waits.
        order = [SHARED, "model-b", SHARED, "model-c", SHARED, "model-d", SHARED, "model-e"]
        stage_handles = [handles[n] for n in order]
        run_id = "cluster-check"
        state = run_dag(
            api, cluster, CHECK_DAG, run_id,
            {"handles": stage_handles, "sensor_handle": handles[SHARED]}, deadline - time.monotonic(),
        )  # fmt: skip
        report.check(state == "success", f"{CHECK_DAG} run state {state}")
        with report.guard("task instances"):
            tis = api.task_instances(CHECK_DAG, run_id)
            check_task_instances(report, tis, {"list_handles": 1, "stage": len(order), "wait_cached": 1}, CHECK_DAG)
        with report.guard("stage XComs"):
            staged = [(stage_handles[i], api.xcom(CHECK_DAG, run_id, "stage", i)) for i in range(len(order))]
            check_staged(report, staged, CHECK_DAG, downloads=1)
            report.notes.append(overlap_fact(tis, staged, handles[SHARED]))
        with report.guard("sensor XCom"):
            sensor_value = api.xcom(CHECK_DAG, run_id, "wait_cached")
            shared_path = next(r.get("path") for h, r in staged if h == handles[SHARED])
            sensor_path = sensor_value.get("path") if isinstance(sensor_value, dict) else sensor_value
            report.check(sensor_path == shared_path, f"sensor returned {sensor_path!r}, expected {shared_path!r}")
        deferred, how = sensor_deferral(home, CHECK_DAG, run_id, "wait_cached")
        report.check(deferred, f"sensor deferred to the triggerer and resumed on a worker ({how})")
        ran = worker_tasks(cluster)
        report.check(
            all(ran.get(w) for w in WORKERS),
            "both celery workers executed tasks: "
            + "; ".join(f"{w}: {', '.join(ran.get(w, [])) or '-'}" for w in WORKERS),
        )
        with report.guard("hub statistics"):
            check_hub(report, hub.stats(), {f"/cluster/{n}/1": 1 for n in MODELS})
        with report.guard("bucket listing"):
            check_bucket(report, gcs_endpoint, handles.values())

        with report.guard(f"{WATCHED_DAG} started by its watcher"):
            wait_for(
                f"the watcher to start {WATCHED_DAG}",
                lambda: any(r["state"] in ("success", "failed") for r in api.dag_runs(WATCHED_DAG)),
                min(180.0, max(30.0, deadline - time.monotonic())),
                cluster,
                2,
            )

        # 2. The example DAG on the same cluster and cache: every model is a hit, nothing is downloaded again.
        if not args.skip_example:
            run_id = "cluster-prestage"
            all_handles = list(handles.values())
            state = run_dag(
                api, cluster, EXAMPLE_DAG, run_id, {"handles": all_handles, "cache_dir": CACHE_DIR},
                deadline - time.monotonic(),
            )  # fmt: skip
            report.check(state == "success", f"{EXAMPLE_DAG} run state {state}")
            with report.guard(f"{EXAMPLE_DAG} task instances"):
                tis = api.task_instances(EXAMPLE_DAG, run_id)
                check_task_instances(
                    report, tis, {"list_handles": 1, "stage": len(all_handles), "consume": 1}, EXAMPLE_DAG
                )
            with report.guard(f"{EXAMPLE_DAG} stage XComs"):
                staged = [(all_handles[i], api.xcom(EXAMPLE_DAG, run_id, "stage", i)) for i in range(len(all_handles))]
                check_staged(report, staged, EXAMPLE_DAG, downloads=0)
            with report.guard("hub statistics after the example DAG"):
                check_hub(report, hub.stats(), {f"/cluster/{n}/1": 1 for n in MODELS})
            with report.guard("bucket listing after the example DAG"):
                check_bucket(report, gcs_endpoint, handles.values())
        # 3. The watched DAG: started once by the cluster's triggerer, for the revision the stagers published.
        if args.skip_example:
            time.sleep(10)  # several polls with nothing new published
        with report.guard(f"{WATCHED_DAG} runs"):
            check_watched(report, api, staged, handles[SHARED])
    except ClusterError as exc:
        report.failures.append(f"FAIL: {exc}")
    except Exception as exc:  # a harness bug must still stop the cluster and show the logs
        report.failures.append(f"FAIL: harness error {type(exc).__name__}: {exc}")
    finally:
        # Stopping must not be interrupted half-way (run.sh sends SIGTERM when it is itself interrupted).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        elapsed = time.monotonic() - started
        if report.failures:
            print("\n========== component logs (last lines) ==========", flush=True)
            print(cluster.tails(args.tail_lines), flush=True)
        log("stopping every component")
        cluster.stop()

    print("\n========== tfhub cluster check ==========")
    for line in report.facts + report.notes + report.failures:
        print("  " + line)
    if args.summary is not None:  # run.sh prints it last: the plain "N passed, N failed" line CI reads
        args.summary.write_text(f"cluster: {len(report.facts)} passed, {len(report.failures)} failed\n")
    verdict = "FAIL" if report.failures else "PASS"
    print(
        f"{verdict}: {len(report.facts)} checks ok, {len(report.failures)} failed, {elapsed:.0f} s"
        f" (logs: {cluster.log_dir})"
    )
    return 1 if report.failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="empty work dir (logs, databases, AIRFLOW_HOME)")
    parser.add_argument("--pidfile", type=Path, required=True, help="'<pid> <name>' of every process started")
    parser.add_argument("--timeout", type=float, default=480.0, help="seconds for the DAG runs, both together")
    parser.add_argument("--models-cache", type=Path, default=ROOT / ".cache" / "cluster-models")
    parser.add_argument("--skip-example", action="store_true", help="do not run the tfhub_prestage example DAG")
    parser.add_argument("--tail-lines", type=int, default=40)
    parser.add_argument("--summary", type=Path, help="write the one-line 'N passed, N failed' summary here")
    args = parser.parse_args(argv)

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
