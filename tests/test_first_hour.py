"""Issue 22: what a new user trips over in the first hour: mapped bad handles, misleading log lines."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from airflow_utils import get_dag

BAD_HANDLE = "https://tfhub.dev/google/nnlm-en-dim50"  # no version


def _task_instances(dr: Any, task_id: str) -> list[Any]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return list(
            session.scalars(
                select(TaskInstance).where(TaskInstance.run_id == dr.run_id, TaskInstance.task_id == task_id)
            ).all()
        )


# -- a mapped stage with a bad handle ---------------------------------------------------------------
def test_mapped_bad_handle_fails_on_the_first_try_labelled_by_its_handle(
    cache_dir: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """The handles come from XCom, so the operator is built (unmapped) inside the running task."""
    dag = get_dag("tfhub_prestage")  # its stage task has retries=2
    dr = dag.test(run_conf={"handles": [BAD_HANDLE], "cache_dir": cache_dir})
    out, err = capfd.readouterr()
    assert dr.state == "failed"
    (ti,) = _task_instances(dr, "stage")
    assert (ti.state, ti.try_number) == ("failed", 1)  # AirflowFailException: no up_for_retry
    assert ti.rendered_map_index == "google/nnlm-en-dim50"
    log = out + err
    assert f"AirflowFailException: Model handle '{BAD_HANDLE}'" in log
    # the error is raised from execute, after the "Pre Execute" group closed, not inside it
    tail = log[log.rindex("::endgroup::", 0, log.index("AirflowFailException")) :]
    assert "::group::" not in tail[: tail.index("AirflowFailException")]
    # the extra links do not ask for the XCom a failed task never pushed
    assert "XCom not found" not in log


def test_mapped_literal_list_is_checked_at_parse_time(tmp_path: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    (tmp_path / "mapped_literals.py").write_text(
        textwrap.dedent(
            f"""
            from datetime import datetime
            from airflow.sdk import DAG
            from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator

            with DAG("mapped_literals", schedule=None, start_date=datetime(2026, 1, 1)):
                TFHubStageModelOperator.partial(task_id="stage", retries=2).expand(
                    handle=["https://tfhub.dev/google/spice/2", "{BAD_HANDLE}"]
                )
            """
        )
    )
    bag = DagBag(dag_folder=str(tmp_path))
    (error,) = bag.import_errors.values()
    assert f"stage: item 1 of expand(handle=[...]): Model handle '{BAD_HANDLE}'" in error


def test_mapped_partial_and_expand_kwargs_literals_are_checked() -> None:
    from airflow.sdk import DAG

    from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator
    from tfhub_cache.errors import ConfigurationError, InvalidHandleError

    good = "https://tfhub.dev/google/spice/2"
    with DAG("mapped_checks", schedule=None):
        with pytest.raises(ConfigurationError, match=r"partial\(sha256=...\).*64-character hex"):
            TFHubStageModelOperator.partial(task_id="a", sha256="abc").expand(handle=[good])
        with pytest.raises(InvalidHandleError, match=r"item 1 of expand_kwargs\(\[...\]\).*ftp://x/m"):
            TFHubStageModelOperator.partial(task_id="b").expand_kwargs([{"handle": good}, {"handle": "ftp://x/m"}])
        with pytest.raises(ConfigurationError, match=r"item 0 of expand\(load_format=\[...\]\).*ZIP"):
            TFHubStageModelOperator.partial(task_id="c", handle=good).expand(load_format=["ZIP"])
        # templates and XComArgs are left to run time; good literals pass
        mapped = TFHubStageModelOperator.partial(task_id="d").expand(handle=[good, "{{ params.h }}"])
    assert mapped.task_id == "d"
