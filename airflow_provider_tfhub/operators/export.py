"""``TFHubExportForServingOperator``: the last step to serving, ``<base_path>/<model_name>/<version>/``.

Takes the staged-model dict of a stage task (XCom) or a handle to stage first, and exports the
staged model where TF Serving's poller picks it up; see :mod:`tfhub_cache.export`
for how versions are chosen and why a version directory never appears half written. The XCom is
``export_path``, ``version``, ``model_name``, ``base_path``, ``sha256``, ``exported`` (false when
nothing was written) and ``removed_versions``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_provider_tfhub.arguments import (
    ArgumentChecks,
    MappedArgumentChecks,
    check_arguments,
    checked_arguments,
    raise_argument_error,
)
from airflow_provider_tfhub.links import TFHubModelPageLink, TFHubStagedModelLink
from airflow_provider_tfhub.operators.labels import HANDLE_MAP_INDEX_TEMPLATE
from airflow_provider_tfhub.task_helpers import emit_asset_events, result_of, run_core
from tfhub_cache import export as core_export
from tfhub_cache import settings
from tfhub_cache.errors import ConfigurationError
from tfhub_cache.handles import parse_handle
from tfhub_cache.labels import handle_label


class TFHubExportForServingOperator(MappedArgumentChecks, BaseOperator):
    """Export a staged TF Hub model for TensorFlow Serving.

    :param staged: a staged-model dict (the stage operator's XCom, e.g. ``stage.output``); or
    :param handle: a model handle to stage first (a cache hit when it is staged already).
    :param base_path: TF Serving's base path, a local directory or ``gs://bucket/prefix`` (templated).
    :param model_name: the model's directory under ``base_path`` (templated).
    :param version: the version to write; default the next integer (nothing is added when the
        highest version already holds the same sha256).
    :param keep_versions: afterwards remove the oldest versions beyond this many.
    :param overwrite: replace an explicit ``version`` that holds another model (else an error).
    :param replaced_max_age: how long the tree an overwrite replaced stays (hidden) on a local
        ``base_path`` for servers still reading it; a later export removes it once older
        (``"0s"``: the next export; ``None`` or ``"never"``: kept until removed by hand).
    :param tfhub_conn_id: ``tfhub`` connection (cache dir, token, mirrors, GCS credentials).
    :param cache_dir: cache to stage ``handle`` into (default from the connection/environment).
    """

    template_fields: Sequence[str] = (
        "staged",
        "handle",
        "base_path",
        "model_name",
        "version",
        "keep_versions",
        "replaced_max_age",
    )
    ui_color = "#e0f0ff"
    operator_extra_links = (TFHubModelPageLink(), TFHubStagedModelLink())
    argument_checks: ClassVar[ArgumentChecks] = {
        "handle": parse_handle,
        "base_path": core_export.check_base_path,
        "model_name": core_export.check_model_name,
        "version": lambda value: core_export.check_positive_int(value, "version"),
        "keep_versions": lambda value: core_export.check_positive_int(value, "keep_versions"),
        "replaced_max_age": core_export.check_replaced_max_age,
    }

    @property
    def handle_label(self) -> str:
        """Mapped instances are labelled by the model they export (``google/nnlm-en-dim50/2``)."""
        staged = self.staged if isinstance(self.staged, Mapping) else {}
        handle = self.handle or staged.get("handle")
        return handle_label(handle) if handle else str(self.model_name)

    def __init__(
        self,
        *,
        base_path: str,
        model_name: str,
        staged: Any = None,  # the staged-model dict or, usually, stage.output (an XComArg)
        handle: str | None = None,
        version: int | str | None = None,
        keep_versions: int | str | None = None,
        overwrite: bool = False,
        replaced_max_age: float | str | timedelta | None = core_export.DEFAULT_REPLACED_MAX_AGE,
        tfhub_conn_id: str = "tfhub_default",
        cache_dir: str | None = None,
        map_index_template: str | None = HANDLE_MAP_INDEX_TEMPLATE,
        **kwargs: Any,
    ) -> None:
        super().__init__(map_index_template=map_index_template, **kwargs)
        self.staged = staged
        self.handle = handle
        self.base_path = base_path
        self.model_name = model_name
        self.version = version
        self.keep_versions = keep_versions
        self.overwrite = overwrite
        self.replaced_max_age = replaced_max_age
        self.tfhub_conn_id = tfhub_conn_id
        self.cache_dir = cache_dir
        with checked_arguments(self):
            if staged is None and not handle:
                raise ConfigurationError(
                    "TFHubExportForServingOperator needs staged= (a stage task's output) or handle= (to stage first)."
                )
            check_arguments(
                self.argument_checks,
                {
                    "handle": handle,
                    "base_path": base_path,
                    "model_name": model_name,
                    "version": version,
                    "keep_versions": keep_versions,
                    "replaced_max_age": replaced_max_age,
                },
            )

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_tfhub.hooks.tfhub import TFHubHook

        raise_argument_error(self)
        hook = TFHubHook(tfhub_conn_id=self.tfhub_conn_id)
        staged = self.staged
        if staged is None:
            staged = run_core(hook.stage, str(self.handle), self.cache_dir or None)
        if not isinstance(staged, Mapping):
            raise ConfigurationError(
                f"staged={staged!r} is not a staged-model dict; pass one stage task's output (for a mapped stage "
                "task, map the export over its outputs with .expand(staged=stage.output))."
            )
        # GCS credentials (the connection's gcp_conn_id) for a gs:// target or source
        gcs_path = next((p for p in (str(self.base_path), str(staged.get("path"))) if p.startswith("gs://")), "")
        result: dict[str, Any] = run_core(
            core_export.export_for_serving,
            staged,
            self.base_path,
            self.model_name,
            version=self.version,
            keep_versions=self.keep_versions,
            overwrite=self.overwrite,
            lock_timeout=settings.resolve_lock_timeout(None, hook.settings.config_lock_timeout),
            storage_options=hook.storage_options(gcs_path),
            replaced_max_age=self.replaced_max_age,
        )
        # An export is logged once, by the core ("Exported <handle> ... as version <n> of <name> at <path>").
        emit_asset_events(self, context, result)
        self._staged_input = dict(staged)
        self._export_result = result
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Lineage (only called by the OpenLineage provider): handle -> export path, with sha256/etag/version."""
        from airflow_provider_tfhub.openlineage import export_lineage

        result = result_of(self, "_export_result", task_instance)
        staged = getattr(self, "_staged_input", None) or (result and {"handle": result.get("handle"), **result})
        return export_lineage(staged, result)
