"""The export operator and the example DAG ``tfhub_serving_export`` through ``dag.test()`` (issue 13).

The library side of export (versions, keep, pollers, gs://) is ``tests/library/test_export.py``.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException
from airflow_utils import get_dag, xcom

from airflow_provider_tfhub.operators.export import TFHubExportForServingOperator
from tfhub_cache.errors import ConfigurationError


def versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()) if model_dir.exists() else []


def test_example_dag_stage_then_export(hub: Any, handle_of: Any, cache_dir: str, tmp_path: Path) -> None:
    dag = get_dag("tfhub_serving_export")
    conf = {"handle": handle_of("small_a"), "cache_dir": cache_dir, "base_path": str(tmp_path), "model_name": "a"}
    dr = dag.test(run_conf=conf)
    assert dr.state == "success"
    staged, exported = xcom(dr, "stage", -1), xcom(dr, "export", -1)
    assert exported["export_path"] == str(tmp_path / "a" / "1") and exported["sha256"] == staged["sha256"]
    assert exported["exported"] is True and exported["handle"] == staged["handle"]
    dr = dag.test(run_conf=conf)  # the same model again: no new version
    assert dr.state == "success" and xcom(dr, "export", -1)["exported"] is False
    assert versions(tmp_path / "a") == [1]


def test_operator_stages_a_handle_and_fails_permanently_on_conflict(
    hub: Any, handle_of: Any, cache_dir: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match=r"staged= .* or handle="):
        TFHubExportForServingOperator(task_id="x", base_path=str(tmp_path), model_name="m")
    with pytest.raises(ConfigurationError, match="model_name"):
        TFHubExportForServingOperator(task_id="x", handle=handle_of("small_a"), base_path=str(tmp_path), model_name="")

    def op(name: str, **kw: Any) -> Any:
        return TFHubExportForServingOperator(
            task_id="e", handle=handle_of(name), cache_dir=cache_dir, base_path=str(tmp_path), model_name="m", **kw
        )

    assert op("small_a", version=2).execute({})["version"] == 2
    with pytest.raises(AirflowFailException, match="Version 2"):
        op("small_b", version=2).execute({})


def test_operator_replaced_max_age_keeps_then_removes_the_replaced_tree(
    hub: Any, handle_of: Any, cache_dir: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match=r"replaced_max_age: .*'soon'.*'never'"):  # when the DAG is parsed
        TFHubExportForServingOperator(
            task_id="x", handle=handle_of("small_a"), base_path=str(tmp_path), model_name="m", replaced_max_age="soon"
        )

    def op(name: str, **kw: Any) -> Any:
        return TFHubExportForServingOperator(
            task_id="e", handle=handle_of(name), cache_dir=cache_dir, base_path=str(tmp_path), model_name="m", **kw
        )

    def replaced() -> list[str]:
        return sorted(p.name for p in (tmp_path / "m").iterdir() if p.name.endswith(".replaced"))

    op("small_a", version=1).execute({})
    op("small_b", version=1, overwrite=True).execute({})
    [tree] = replaced()
    an_hour_ago = time.time() - 3600
    os.utime(tmp_path / "m" / tree, (an_hour_ago, an_hour_ago))
    for kept in (None, "never", timedelta(hours=2), "1d"):
        op("small_a", version=2, replaced_max_age=kept).execute({})
        assert replaced() == [tree], kept
    op("small_a", version=2, replaced_max_age="30m").execute({})
    assert replaced() == [] and versions(tmp_path / "m") == [1, 2]
