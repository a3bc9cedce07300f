"""``TFHubStageModelOperator``: stage a model into the cache and hand its path downstream.

The XCom value is the staged-model dict (``handle``, ``path``, ``cache_dir``, ``cache_key``,
``load_format``, ``sha256``, ``bytes``, ``files``, ``etag``, ``source_url``, ``staged_at``,
``downloaded``, ...). Inputs that can be checked without a network are checked at DAG-parse time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_provider_tfhub.arguments import (
    ArgumentChecks,
    MappedArgumentChecks,
    check_arguments,
    checked_arguments,
    raise_argument_error,
)
from airflow_provider_tfhub.links import TFHubModelPageLink, TFHubStagedModelLink
from airflow_provider_tfhub.operators.labels import (
    HANDLE_MAP_INDEX_TEMPLATE,
    HandleLabelMixin,
    keep_hosts_if_ambiguous,
)
from airflow_provider_tfhub.run_holds import HoldFor, check_hold_for, hold_staged
from airflow_provider_tfhub.task_helpers import emit_asset_events, result_of, run_core
from tfhub_cache import settings
from tfhub_cache.archive.extract import check_max_files
from tfhub_cache.cache.options import StageOptions, check_sha256
from tfhub_cache.fetch.mirrors import parse_mirrors
from tfhub_cache.fetch.ranged import connections_from
from tfhub_cache.handles import parse_handle

if TYPE_CHECKING:
    from airflow_provider_tfhub.hooks.tfhub import TFHubHook


class TFHubStageModelOperator(MappedArgumentChecks, HandleLabelMixin, BaseOperator):
    """Stage a TF Hub model (tfhub.dev, Kaggle, http(s) or gs:// archive, local dir) into the cache.

    :param handle: model handle (templated).
    :param cache_dir: local dir or ``gs://bucket/prefix`` (templated); default from the connection,
        ``TFHUB_CACHE_DIR`` or ``[tfhub] cache_dir``.
    :param tfhub_conn_id: ``tfhub`` connection (optional).
    :param sha256: pin of the archive; a mismatch fails without retry and caches nothing.
    :param load_format: ``AUTO``/``COMPRESSED`` stage; ``UNCOMPRESSED`` resolves the hub's gs:// location.
    :param refresh: ``never`` (default), ``if_changed`` or ``always``.
    :param offline: no network at all; a cache miss fails (default: ``TFHUB_OFFLINE``).
    :param lock_timeout: seconds without progress before another stager's lock is taken over.
    :param mirrors: URL prefix -> mirror prefix (dict or JSON); default from the connection extra
        ``mirrors``, ``TFHUB_MIRRORS`` or ``[tfhub] mirrors``. Only the fetched URL changes.
    :param map_index_template: label of mapped instances; default: the handle, shortened
        (``google/nnlm-en-dim50/2``), see :mod:`airflow_provider_tfhub.operators.labels`.
    :param download_connections: parallel ranged connections for big archives (default
        ``TFHUB_DOWNLOAD_CONNECTIONS`` or 8); ``1`` downloads with one stream.
    :param max_extracted_files: most files and directories the archive may create (default
        ``TFHUB_MAX_EXTRACTED_FILES``, else 100000); more fails without retries, leaving nothing behind.
    :param upstream_cache: a shared ``gs://bucket/prefix`` cache in front of which ``cache_dir`` is a
        local tier (templated; default from the connection extra ``upstream_cache``,
        ``TFHUB_UPSTREAM_CACHE`` or ``[tfhub] upstream_cache``): a miss pulls the upstream's revision,
        staging it there first (once per fleet) when the upstream lacks it.
    :param hold_for: hold the staged revision for this DAG run during this long (``"12h"``, ``"7d"``,
        seconds or a ``timedelta``) so ``prune`` keeps it; ``None`` (default) holds nothing. Release
        it with :class:`~airflow_provider_tfhub.operators.release.TFHubReleaseOperator` as a teardown.

    Every Asset in ``outlets`` gets an event whose ``extra`` is the staged-model dict.
    """

    template_fields: Sequence[str] = (
        "handle",
        "cache_dir",
        "sha256",
        "load_format",
        "refresh",
        "upstream_cache",
        "hold_for",
    )
    ui_color = "#ffe8cc"
    operator_extra_links = (TFHubModelPageLink(), TFHubStagedModelLink())
    argument_checks: ClassVar[ArgumentChecks] = {
        "handle": parse_handle,
        "sha256": check_sha256,
        "load_format": settings.resolve_load_format,
        "refresh": settings.resolve_refresh,
        "cache_dir": settings.resolve_cache_dir,
        "mirrors": lambda value: parse_mirrors(value, setting="The mirrors argument"),
        "download_connections": connections_from,
        "max_extracted_files": check_max_files,
        "upstream_cache": settings.resolve_upstream_cache,
    }

    @classmethod
    def on_expand(cls, mapped: Any, mapped_kwargs: Mapping[str, Any]) -> None:
        keep_hosts_if_ambiguous(mapped, mapped_kwargs)

    def __init__(
        self,
        *,
        handle: str,
        cache_dir: str | None = None,
        tfhub_conn_id: str = "tfhub_default",
        sha256: str | None = None,
        load_format: str | None = None,
        refresh: str = "never",
        offline: bool | None = None,
        lock_timeout: float | None = None,
        mirrors: dict[str, str] | str | None = None,
        map_index_template: str | None = HANDLE_MAP_INDEX_TEMPLATE,
        download_connections: int | None = None,
        max_extracted_files: int | None = None,
        upstream_cache: str | None = None,
        hold_for: HoldFor = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(map_index_template=map_index_template, **kwargs)
        self.handle = handle
        self.cache_dir = cache_dir
        self.tfhub_conn_id = tfhub_conn_id
        self.sha256 = sha256
        self.load_format = load_format
        self.refresh = refresh
        self.offline = offline
        self.lock_timeout = lock_timeout
        self.mirrors = mirrors
        self.download_connections = download_connections
        self.max_extracted_files = max_extracted_files
        self.upstream_cache = upstream_cache
        self.hold_for = hold_for
        with checked_arguments(self):
            check_hold_for(hold_for)
            check_arguments(
                self.argument_checks,
                {
                    "handle": handle,
                    "sha256": sha256,
                    "load_format": load_format,
                    "refresh": refresh,
                    "cache_dir": cache_dir,
                    "mirrors": mirrors,
                    "download_connections": download_connections,
                    "max_extracted_files": max_extracted_files,
                    "upstream_cache": upstream_cache,
                },
            )

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_tfhub.hooks.tfhub import TFHubHook

        raise_argument_error(self)
        hook = TFHubHook(tfhub_conn_id=self.tfhub_conn_id)
        staged: dict[str, Any] = run_core(self._stage, hook)
        # A download is logged once, by the core ("Staged <handle> into <path> ..."); the rest here.
        if staged.get("load_format") == "UNCOMPRESSED":
            self.log.info("Resolved %s to its uncompressed copy %s", staged["handle"], staged["path"])
        elif not staged["downloaded"]:
            self.log.info("Found %s in the cache at %s", staged["handle"], staged["path"])
        run_core(hold_staged, staged, hold_for=self.hold_for, context=context, conn_id=self.tfhub_conn_id)
        emit_asset_events(self, context, staged)
        self._staged_result = staged
        return staged

    def stage_options(self) -> StageOptions:
        """The operator's arguments (templates rendered) as the options handed down to the stager."""
        return StageOptions(
            sha256=self.sha256 or None,
            load_format=self.load_format or None,
            refresh=self.refresh,
            offline=self.offline,
            lock_timeout=self.lock_timeout,
            mirrors=self.mirrors or None,
            download_connections=self.download_connections,
            max_extracted_files=self.max_extracted_files,
            upstream_cache=self.upstream_cache or None,
        )

    def _stage(self, hook: TFHubHook) -> dict[str, Any]:
        # the options are built inside run_core: a bad rendered value fails without retries
        return hook.stage(str(self.handle), self.cache_dir or None, options=self.stage_options())

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Lineage (only called by the OpenLineage provider): handle -> staged path, with sha256/etag/revision."""
        from airflow_provider_tfhub.openlineage import stage_lineage

        return stage_lineage(result_of(self, "_staged_result", task_instance))
