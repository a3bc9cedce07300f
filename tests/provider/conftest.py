"""Airflow layer fixtures: a migrated SQLite metadata DB for every provider test (``dag.test()``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def airflow_db() -> None:
    """A migrated SQLite metadata DB for ``dag.test()`` (about 3 s, once per session)."""
    from airflow.utils import db

    db.resetdb()
