"""``make demo``: run the example DAG end to end on this machine, with no account and no internet.

It builds a small SavedModel (once, in a subprocess), serves it from a loopback TF Hub
(redirect chain, ``?tf-hub-format=compressed``, ETag, Range) exactly the way tfhub.dev serves
models, migrates a SQLite metadata DB under a project-local ``AIRFLOW_HOME``, runs the
``tfhub_prestage`` DAG through ``dag.test()`` and prints the staged paths. Run it again: the
second run is a cache hit. Set ``TFHUB_DEMO_HANDLES`` (comma-separated) to stage real models
instead when the machine has internet access.

It lives outside the package (not in the wheel) because it needs a source checkout: the example
DAG under ``dags/`` and the project-local ``.airflow`` and ``.cache`` directories. Run it from the
repository with ``make demo`` (``python scripts/demo.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from airflow_provider_tfhub.testing.hub_server import HubServer

REPO = Path(__file__).resolve().parents[1]


def _prepare_environment(work: Path) -> None:
    os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".airflow"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work.mkdir(parents=True, exist_ok=True)


def _build_demo_archives(work: Path) -> dict[str, str]:
    code = (
        "import json, sys\n"
        "from airflow_provider_tfhub.testing.models import cached_model_archive\n"
        "root = sys.argv[1]\n"
        "print(json.dumps({\n"
        "  'text-embedder': str(cached_model_archive(root, 'text-embedder', scale=2.0, offset=1.0)),\n"
        "  'image-features': str(cached_model_archive(root, 'image-features', scale=0.5, offset=3.0)),\n"
        "}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(work / "models")], check=True, capture_output=True, text=True)
    result: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    work = REPO / ".cache" / "demo"
    _prepare_environment(work)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)

    from airflow.dag_processing.dagbag import DagBag

    cache_dir = os.environ.get("TFHUB_CACHE_DIR") or str(work / "tfhub_modules")
    hub = _demo_hub()
    try:
        handles = [h.strip() for h in os.environ.get("TFHUB_DEMO_HANDLES", "").split(",") if h.strip()]
        if not handles:
            print("Building the demo models (first run only) and serving them on", hub.url)
            for name, archive in _build_demo_archives(work).items():
                handles.append(hub.add_model(f"/demo/{name}/1", archive))
        bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
        dag = bag.get_dag("tfhub_prestage")
        if dag is None:
            print(f"DAG tfhub_prestage not found: {bag.import_errors}", file=sys.stderr)
            return 1
        dr = dag.test(run_conf={"handles": handles, "cache_dir": cache_dir})
        staged = _staged_paths(dr)
    finally:
        hub.stop()
    if dr.state != "success" or not staged:
        print(f"Demo run ended {dr.state}; see the task logs above.", file=sys.stderr)
        return 1
    print(f"\nStaged models (tensorflow_hub finds them with TFHUB_CACHE_DIR={cache_dir}):")
    for item in staged:
        print(f"  {item['handle']}\n    -> {item['path']}  ({'downloaded' if item['downloaded'] else 'cache hit'})")
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
        return [XComModel.deserialize_value(row) for row in session.scalars(query).all()]


if __name__ == "__main__":
    sys.exit(main())
