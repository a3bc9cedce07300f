"""The library's functions as a program calls them: each names its cache by dir, like the CLI.

``cache_dir`` is a local directory or ``gs://bucket[/prefix]`` (None: ``TFHUB_CACHE_DIR``, else
tensorflow_hub's default); ``storage_options`` reach the storage (GCS ``credentials``/``project``).
These are the names ``import tfhub_cache`` offers; the modules they call take an open
:class:`~tfhub_cache.storage.base.Storage` instead, for callers that already hold one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tfhub_cache import settings
from tfhub_cache.cache import inventory
from tfhub_cache.cache.entries import lookup_entry
from tfhub_cache.cache.options import StageOptions
from tfhub_cache.cache.records import StagedModel
from tfhub_cache.cache.tiers import stage_tiered
from tfhub_cache.export import export_for_serving
from tfhub_cache.handles import parse_handle
from tfhub_cache.storage import Storage, open_storage

__all__ = ["export_for_serving", "lookup", "ls", "prune", "stage", "verify"]


def stage(
    handle: str, cache_dir: str | None = None, *, options: StageOptions | None = None, **choices: Any
) -> StagedModel:
    """Stage ``handle`` into ``cache_dir`` and return its staged-model dict (a cache hit costs no request).

    The choices are one :class:`~tfhub_cache.cache.options.StageOptions` or its fields as keyword
    arguments (``sha256=``, ``refresh=``, ``mirrors=``, ``upstream_cache=`` ...); what is not given
    comes from ``TFHUB_*`` or the defaults. With an ``upstream_cache`` (or ``TFHUB_UPSTREAM_CACHE``),
    ``cache_dir`` is a local tier of that shared cache: a miss pulls from it, and the model is staged
    there first when it lacks it (one hub download per fleet).
    """
    return stage_tiered(handle, cache_dir, options=options, **choices)


def _storage(cache_dir: str | None, storage_options: Mapping[str, Any] | None) -> Storage:
    return open_storage(settings.resolve_cache_dir(cache_dir), **dict(storage_options or {}))


def lookup(
    handle: str, cache_dir: str | None = None, *, storage_options: Mapping[str, Any] | None = None
) -> StagedModel | None:
    """The staged-model dict of ``handle`` when it is completely staged, else None.

    Reads only: no lock, no network, nothing written (a model dir that tensorflow_hub filled is
    not an entry until :func:`stage` adopts it).
    """
    return lookup_entry(_storage(cache_dir, storage_options), parse_handle(handle).text)


def ls(
    cache_dir: str | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    lock_timeout: float | None = None,
) -> list[dict[str, Any]]:
    """Every entry of the cache with its state, size, revisions and last use (``tfhub-cache ls``)."""
    return inventory.list_entries(
        _storage(cache_dir, storage_options), lock_timeout=settings.resolve_lock_timeout(lock_timeout)
    )


def verify(
    cache_dir: str | None = None,
    handle: str | None = None,
    *,
    all_revisions: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Check staged files against their recorded sizes and CRC32C (``tfhub-cache verify``)."""
    return inventory.verify(_storage(cache_dir, storage_options), handle, all_revisions=all_revisions)


def prune(
    cache_dir: str | None = None,
    *,
    max_age: float | str | None = None,
    max_total_bytes: int | str | None = None,
    keep: Iterable[str] = (),
    dry_run: bool = False,
    superseded_max_age: float | str | None = inventory.DEFAULT_SUPERSEDED_MAX_AGE,
    lock_timeout: float | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> inventory.PruneReport:
    """Remove leftovers, old superseded revisions and unused entries (``tfhub-cache prune``)."""
    return inventory.prune(
        _storage(cache_dir, storage_options),
        max_age=max_age,
        max_total_bytes=max_total_bytes,
        keep=keep,
        dry_run=dry_run,
        superseded_max_age=superseded_max_age,
        lock_timeout=settings.resolve_lock_timeout(lock_timeout),
    )
