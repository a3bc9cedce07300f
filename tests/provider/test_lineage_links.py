"""Issue 13: OpenLineage facets (with the real OpenLineage provider) and extra links of stage and export tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from airflow_utils import get_dag, xcom

from airflow_provider_tfhub.links import console_url, model_page_url
from airflow_provider_tfhub.operators.export import TFHubExportForServingOperator
from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator

ROOT = Path(__file__).resolve().parents[2]


def test_stage_and_export_facets(hub: Any, handle_of: Any, cache_dir: str, tmp_path: Path) -> None:
    from airflow.providers.openlineage.extractors import OperatorLineage

    handle = handle_of("small_a")
    stage = TFHubStageModelOperator(task_id="stage", handle=handle, cache_dir=cache_dir)
    staged = stage.execute({})
    lineage = stage.get_openlineage_facets_on_complete(None)
    assert isinstance(lineage, OperatorLineage)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [(hub.url, "/google/small_a/1")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("file", staged["path"])]
    facet = lineage.run_facets["tfhubModel"]
    assert (facet.handle, facet.sha256, facet.etag) == (handle, staged["sha256"], staged["etag"])
    assert facet.revision == staged.get("revision")

    export = TFHubExportForServingOperator(task_id="export", staged=staged, base_path=str(tmp_path), model_name="a")
    result = export.execute({})
    lineage = export.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [(hub.url, "/google/small_a/1")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("file", result["export_path"])]
    facet = lineage.run_facets["tfhubModel"]
    assert (facet.sha256, facet.etag, facet.version, facet.exported) == (staged["sha256"], staged["etag"], 1, True)


def test_openlineage_listener_emits_our_facets_in_a_dag_run(
    hub: Any, handle_of: Any, cache_dir: str, tmp_path: Path
) -> None:
    """The real provider's listener, through ``dag.test()``, writes events with our datasets and facet."""
    events = tmp_path / "ol-events.jsonl"
    env = {
        **os.environ,
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "file", "log_file_path": str(events), "append": True}),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "tfhub-test",
    }
    conf = {
        "handle": handle_of("small_b"),
        "cache_dir": cache_dir,
        "base_path": str(tmp_path / "srv"),
        "model_name": "b",
    }
    code = f"""
        import sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from airflow_utils import get_dag
        dr = get_dag("tfhub_serving_export").test(run_conf={conf!r})
        assert dr.state == "success", dr.state
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    complete = {
        e["job"]["name"].rsplit(".", 1)[-1]: e
        for e in lines
        if e["eventType"] == "COMPLETE" and "." in e["job"]["name"]
    }
    assert {"stage", "export"} <= set(complete), sorted(complete)
    stage, export = complete["stage"], complete["export"]
    assert stage["inputs"][0]["namespace"] == hub.url and stage["inputs"][0]["name"] == "/google/small_b/1"
    assert stage["outputs"][0]["namespace"] == "file"
    facet = stage["run"]["facets"]["tfhubModel"]
    assert len(facet["sha256"]) == 64 and facet["etag"] and facet["handle"] == conf["handle"]
    assert export["outputs"][0]["name"] == str(tmp_path / "srv" / "b" / "1")
    assert export["run"]["facets"]["tfhubModel"]["version"] == 1


def test_nothing_of_openlineage_is_imported_by_our_modules() -> None:
    code = """
        import sys
        import airflow_provider_tfhub.operators.stage, airflow_provider_tfhub.operators.export
        import airflow_provider_tfhub.get_provider_info
        # Airflow's provider discovery reads the OpenLineage provider's info; the client and extractors stay out.
        ours = ("openlineage.", "airflow.providers.openlineage.extractors", "airflow_provider_tfhub.openlineage")
        print(sorted(m for m in sys.modules if m.startswith(ours)))
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


# -- extra links ------------------------------------------------------------------------------------


def test_link_urls() -> None:
    assert model_page_url("https://tfhub.dev/google/x/1") == "https://tfhub.dev/google/x/1"
    assert model_page_url("https://h/a.tar.gz?tf-hub-format=compressed") == "https://h/a.tar.gz"
    assert model_page_url("gs://b/models/m.tar.gz") == "https://console.cloud.google.com/storage/browser/b/models"
    assert model_page_url("/data/model") == ""
    assert console_url("gs://b/c/0123abc") == "https://console.cloud.google.com/storage/browser/b/c/0123abc"
    assert console_url("/local/path") == ""


def _links(dr: Any, task_id: str) -> dict[str, str | None]:
    """What the UI's API server answers for a finished task instance (serialized DAG, XCom-backed links)."""
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalar(
            select(TaskInstance).where(
                TaskInstance.dag_id == dr.dag_id, TaskInstance.run_id == dr.run_id, TaskInstance.task_id == task_id
            )
        )
        dag = SerializedDagModel.get_dag(dr.dag_id, session=session)
        assert ti is not None and dag is not None
        task = dag.get_task(task_id)
        return {name: task.get_extra_links(ti, name) or None for name in task.extra_links}


def test_extra_links_of_finished_tasks(hub: Any, handle_of: Any, gcs_cache: str) -> None:
    from airflow.providers_manager import ProvidersManager

    registered = set(ProvidersManager().extra_links_class_names)
    assert {
        "airflow_provider_tfhub.links.TFHubModelPageLink",
        "airflow_provider_tfhub.links.TFHubStagedModelLink",
    } <= registered

    handle = handle_of("small_a")
    base = gcs_cache.rsplit("/", 1)[0] + "/serving"
    dr = get_dag("tfhub_serving_export").test(
        run_conf={"handle": handle, "cache_dir": gcs_cache, "base_path": base, "model_name": "a"}
    )
    assert dr.state == "success"
    staged, exported = xcom(dr, "stage", -1), xcom(dr, "export", -1)
    console = "https://console.cloud.google.com/storage/browser/"
    assert _links(dr, "stage") == {
        "Model page": handle,
        "Staged model": console + staged["path"].removeprefix("gs://"),
    }
    assert _links(dr, "export") == {
        "Model page": handle,
        "Staged model": console + exported["export_path"].removeprefix("gs://"),
    }


def test_no_staged_model_link_for_local_paths(hub: Any, handle_of: Any, cache_dir: str, tmp_path: Path) -> None:
    dr = get_dag("tfhub_serving_export").test(
        run_conf={"handle": handle_of("small_b"), "cache_dir": cache_dir, "base_path": str(tmp_path), "model_name": "b"}
    )
    assert dr.state == "success"
    assert _links(dr, "stage") == {"Model page": handle_of("small_b"), "Staged model": None}
