"""Issue 13: OpenLineage facets (with the real OpenLineage provider) and extra links of stage and export tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from airflow_provider_tfhub.operators.export import TFHubExportForServingOperator
from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator

ROOT = Path(__file__).resolve().parents[1]


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
