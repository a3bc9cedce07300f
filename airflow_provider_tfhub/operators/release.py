"""``TFHubReleaseOperator``: release the holds this DAG run took (``hold_for`` on stage or load).

Meant as a teardown (``release.as_teardown(setups=stage)``) so it runs even when training fails;
a run that never gets here is covered by the hold's expiry. See :mod:`tfhub_cache.cache.holds`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_tfhub.run_holds import run_holder
from airflow_provider_tfhub.task_helpers import run_core
from tfhub_cache.cache import holds
from tfhub_cache.errors import ConfigurationError


class TFHubReleaseOperator(BaseOperator):
    """Release this DAG run's holds on the staged model(s).

    :param staged: the staged-model dict, usually ``stage_task.output`` (templated / XComArg); a list
        of them (a mapped stage task) releases each.
    :param tfhub_conn_id: ``tfhub`` connection (its GCP credentials for a gs:// cache).

    Every hold of the run (holder ``<dag_id>/<run_id>``) on each staged handle is removed, whichever
    revision it held. XCom: the released holds.
    """

    template_fields: Sequence[str] = ("staged",)
    ui_color = "#f0f0f0"

    def __init__(self, *, staged: Any, tfhub_conn_id: str = "tfhub_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if staged is None:
            raise ConfigurationError(
                f"{type(self).__name__} needs staged= (the stage operator's output, e.g. staged=stage.output)."
            )
        self.staged = staged
        self.tfhub_conn_id = tfhub_conn_id

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from airflow_provider_tfhub.hooks.tfhub import TFHubHook

        models = [self.staged] if isinstance(self.staged, Mapping) else list(self.staged or ())
        holder = run_holder(context)
        hook = TFHubHook(tfhub_conn_id=self.tfhub_conn_id)
        released: list[dict[str, Any]] = []
        for staged in models:
            if not isinstance(staged, Mapping) or not staged.get("revision"):
                continue  # nothing of it can be held (uncompressed or local model)
            storage = hook.open_storage(staged["cache_dir"])
            for record in run_core(holds.release, storage, staged["handle"], holder=holder):
                self.log.info("Released revision %s of %s (%s).", record["revision"], record["handle"], holder)
                released.append(dict(record))
        if not released:
            self.log.info("%s held nothing here.", holder)
        return released
