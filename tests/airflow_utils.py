"""Helpers for tests that run the example DAGs through ``dag.test()`` on the SQLite metadata DB."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]


def get_dag(dag_id: str) -> Any:
    """Parse ``dags/`` (the configured dags folder, which ``dag.test()`` requires) and return one DAG."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag(dag_id)
    assert dag is not None, f"DAG {dag_id!r} not found in {ROOT / 'dags'}"
    return dag


def xcom(dr: Any, task_id: str, map_index: int | None = None) -> Any:
    """The ``return_value`` XCom of ``task_id`` in run ``dr``: {map_index: value}, or one value."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id, key="return_value")
        # get_many is annotated Select[tuple[XComModel]] (SQLAlchemy 2.0's spelling); SQLAlchemy 2.1 reads that
        # as one column holding a tuple, while the rows are XComModel objects.
        rows = cast("Sequence[XComModel]", session.scalars(query).all())
        values = {row.map_index: XComModel.deserialize_value(row) for row in rows}
    return values if map_index is None else values[map_index]
