"""Holds taken by DAG runs: the stage and load operators' ``hold_for``, and the release operator.

The holder is the DAG run (``<dag_id>/<run_id>``), so every task of a run (a retry, a restarted
training task) shares one hold per revision, and :class:`~airflow_provider_tfhub.operators.release.
TFHubReleaseOperator`, a teardown of the same run, releases exactly it. See
:mod:`tfhub_cache.cache.holds`.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from airflow_provider_tfhub.task_helpers import is_literal
from tfhub_cache.cache import holds
from tfhub_cache.errors import ConfigurationError
from tfhub_cache.units import parse_age

log = logging.getLogger(__name__)

HoldFor = float | int | str | datetime.timedelta | None


def check_hold_for(hold_for: HoldFor) -> None:
    """Fail at DAG-parse time on a ``hold_for`` that is not a positive duration (templates wait for run time)."""
    if hold_for is None or (isinstance(hold_for, str) and not is_literal(hold_for)):
        return
    if parse_age(hold_for) <= 0:
        raise ConfigurationError(f"hold_for={hold_for!r} must be a positive duration such as '12h' or '7d' (or None).")


def run_holder(context: Mapping[str, Any]) -> str:
    """``<dag_id>/<run_id>`` of the running task's DAG run."""
    ti = context["ti"]
    return f"{ti.dag_id}/{ti.run_id}"


def hold_staged(staged: Mapping[str, Any], *, hold_for: HoldFor, context: Mapping[str, Any], conn_id: str) -> None:
    """Hold the revision of ``staged`` for this DAG run during ``hold_for`` (nothing when None)."""
    if hold_for is None:
        return
    if not staged.get("revision") or not staged.get("handle"):
        log.warning("Not holding %s: it has no cache revision (uncompressed or local model).", staged.get("path"))
        return
    from airflow_provider_tfhub.hooks.tfhub import TFHubHook

    storage = TFHubHook(tfhub_conn_id=conn_id).open_storage(staged["cache_dir"])
    record = holds.hold(
        storage, staged["handle"], holder=run_holder(context), ttl=hold_for, revision=staged["revision"]
    )
    log.info(
        "Holding revision %s of %s for %s until %s.",
        record["revision"],
        record["handle"],
        record["holder"],
        record["expires_at"],
    )
