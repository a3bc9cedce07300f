"""``TFHubPruneCacheOperator``: keep a persistent cache from growing forever.

tensorflow_hub never cleans its cache; this removes revisions superseded longer ago than
``superseded_max_age``, whole entries unused for ``max_age``, then
the least recently used ones until the cache fits ``max_total_bytes``, plus what dead stagers left
behind. Entries in ``keep`` and entries a running stager holds are never touched (see
:func:`tfhub_cache.cache.inventory.prune`). The XCom value is the prune report.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_tfhub.task_helpers import check_literals, run_core
from tfhub_cache import settings
from tfhub_cache.cache import inventory
from tfhub_cache.units import format_bytes_si


class TFHubPruneCacheOperator(BaseOperator):
    """Remove cache entries by age of last use, then least recently used ones over a size budget.

    :param cache_dir: local dir or ``gs://bucket/prefix`` (templated); default from the connection,
        ``TFHUB_CACHE_DIR`` or ``[tfhub] cache_dir``.
    :param max_age: remove entries not used for this long: seconds, a ``timedelta`` or ``"7d"``,
        ``"12h"``, ``"30m"``, ``"90s"``.
    :param max_total_bytes: then remove least recently used entries until the cache is at most this
        big: bytes or ``"10G"``, ``"512M"`` (1024-based), ``"1.5GB"`` (1000-based).
    :param keep: handles (or cache keys) never to remove (templated).
    :param superseded_max_age: how long a revision replaced by a refresh stays readable for tasks that
        were given its ``path`` (default ``"1d"``; ``"0s"`` removes every superseded revision, ``None``
        none). The current revision of an entry is never removed this way.
    :param dry_run: report what would be removed, remove nothing.
    :param tfhub_conn_id: ``tfhub`` connection (optional).
    :param lock_timeout: seconds without lease renewal after which a stager counts as dead.
    """

    template_fields: Sequence[str] = ("cache_dir", "keep")
    ui_color = "#ffe8cc"

    def __init__(
        self,
        *,
        cache_dir: str | None = None,
        max_age: float | str | timedelta | None = None,
        max_total_bytes: int | str | None = None,
        keep: Sequence[str] | str = (),
        dry_run: bool = False,
        superseded_max_age: float | str | timedelta | None = inventory.DEFAULT_SUPERSEDED_MAX_AGE,
        tfhub_conn_id: str = "tfhub_default",
        lock_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cache_dir = cache_dir
        self.max_age = inventory.parse_age(max_age) if max_age is not None else None
        self.max_total_bytes = inventory.parse_size(max_total_bytes) if max_total_bytes is not None else None
        self.keep = keep
        self.superseded_max_age = inventory.parse_age(superseded_max_age) if superseded_max_age is not None else None
        self.dry_run_only = dry_run  # BaseOperator.dry_run is a method
        self.tfhub_conn_id = tfhub_conn_id
        self.lock_timeout = lock_timeout
        check_literals((cache_dir, settings.resolve_cache_dir))

    def execute(self, context: Any) -> inventory.PruneReport:
        from airflow_provider_tfhub.hooks.tfhub import TFHubHook

        hook = TFHubHook(tfhub_conn_id=self.tfhub_conn_id)
        storage = hook.open_storage(self.cache_dir or None)
        keep = [self.keep] if isinstance(self.keep, str) else list(self.keep or ())
        report = run_core(
            inventory.prune,
            storage,
            max_age=self.max_age,
            max_total_bytes=self.max_total_bytes,
            keep=[h for h in keep if h],
            dry_run=self.dry_run_only,
            superseded_max_age=self.superseded_max_age,
            lock_timeout=settings.resolve_lock_timeout(self.lock_timeout, hook.settings.config_lock_timeout),
        )
        self.log.info(
            "%s %d entries and %d superseded revisions (%s, %s remain) from %s%s",
            "Would remove" if self.dry_run_only else "Removed",
            len(report["removed"]),
            len(report["removed_revisions"]),
            format_bytes_si(report["freed_bytes"]),
            format_bytes_si(report["total_bytes"]),
            storage.location(),
            " (over budget: the rest is kept or locked)" if report["over_budget"] else "",
        )
        return report
