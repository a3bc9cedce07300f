"""``make demo``: run the example DAG end to end on this machine, with no account and no internet.

It builds a small SavedModel (once, in a subprocess), serves it from a loopback TF Hub
(redirect chain, ``?tf-hub-format=compressed``, ETag, Range) exactly the way tfhub.dev serves
models, migrates a SQLite metadata DB under a project-local ``AIRFLOW_HOME``, runs the
``tfhub_prestage`` DAG through ``dag.test()`` and prints the staged paths. Run it again: the
second run is a cache hit. Set ``TFHUB_DEMO_HANDLES`` (comma-separated) to stage real models
instead when the machine has internet access.

Airflow's own output of the run (scheduler-like bookkeeping, task runner lines, its deprecation
warnings) goes to ``.cache/demo/airflow.log``; the terminal gets only the demo's summary, so that a
successful run shows no line that looks like an error. A failed run says where that log is.

It lives outside the package (not in the wheel) because it needs a source checkout: the example
DAG under ``dags/`` and the project-local ``.airflow`` and ``.cache`` directories. Run it from the
repository with ``make demo`` (``python scripts/demo.py``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tfhub_cache.labels import handle_label
from tfhub_cache.testing.hub import HubServer
from tfhub_cache.testing.models import build_archives_in_subprocess
from tfhub_cache.units import format_bytes_si

REPO = Path(__file__).resolve().parents[1]


def _prepare_environment(work: Path) -> None:
    os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".airflow"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work.mkdir(parents=True, exist_ok=True)


def _build_demo_archives(work: Path) -> dict[str, Path]:
    specs = {"text-embedder": {"scale": 2.0, "offset": 1.0}, "image-features": {"scale": 0.5, "offset": 3.0}}
    return build_archives_in_subprocess(work / "models", specs)


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors, so every logger follows) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(path, "a") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


def main() -> int:
    work = REPO / ".cache" / "demo"
    _prepare_environment(work)
    airflow_log = work / "airflow.log"
    airflow_log.unlink(missing_ok=True)
    with open(airflow_log, "w") as log:
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, stdout=log, stderr=log)

    cache_dir = os.environ.get("TFHUB_CACHE_DIR") or str(work / "tfhub_modules")
    state, staged = "without the DAG", []
    hub = _demo_hub()
    try:
        handles = [h.strip() for h in os.environ.get("TFHUB_DEMO_HANDLES", "").split(",") if h.strip()]
        if not handles:
            print("Building the demo models (first run only) and serving them on", hub.url)
            for name, archive in _build_demo_archives(work).items():
                handles.append(hub.add_model(f"/demo/{name}/1", archive))
        print(f"Running the tfhub_prestage DAG (Airflow's own log: {airflow_log})", flush=True)
        with _output_to(airflow_log):
            from airflow.dag_processing.dagbag import DagBag

            bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
            dag = bag.get_dag("tfhub_prestage")
            if dag is None:
                print(f"DAG tfhub_prestage not found: {bag.import_errors}", file=sys.stderr)
            else:
                dr = dag.test(run_conf={"handles": handles, "cache_dir": cache_dir})
                state, staged = str(dr.state), _staged_paths(dr)
    finally:
        hub.stop()
    if state != "success" or not staged:
        print(f"Demo run ended {state}; the task logs are in {airflow_log}", file=sys.stderr)
        return 1
    print(f"\nStaged models (tensorflow_hub finds them with TFHUB_CACHE_DIR={cache_dir}):")
    for item in staged:
        how = "downloaded" if item["downloaded"] else "cache hit"
        size = format_bytes_si(int(str(item.get("bytes") or 0)))
        print(f"  stage [{handle_label(item['handle'])}]: {how}, {item.get('files')} files, {size}")
        print(f"    {item['handle']}\n    -> {item['path']}")
    return 0


def _demo_hub() -> HubServer:
    """The demo hub on a fixed port, so handles (and cache keys) are the same on every run."""
    port = int(os.environ.get("TFHUB_DEMO_PORT", "18765"))
    try:
        return HubServer(port=port, storage_port=port + 1).start()
    except OSError:
        return HubServer().start()  # taken: any free port (the next run will not be a cache hit)


def _staged_paths(dr: object) -> list[dict[str, object]]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(
            run_id=dr.run_id,  # type: ignore[attr-defined]
            dag_ids="tfhub_prestage",
            task_ids="stage",
            key="return_value",
        )
        in_map_order = query.order_by(None).order_by(XComModel.map_index)  # get_many sorts newest first
        return [XComModel.deserialize_value(row) for row in session.scalars(in_map_order)]


if __name__ == "__main__":
    sys.exit(main())
