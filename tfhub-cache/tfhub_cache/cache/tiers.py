"""Tiered caches: a machine's own cache in front of one shared ``gs://`` cache, so a fleet downloads once.

N workers with N local caches would otherwise make N hub downloads (hubs rate-limit fleets). With an
upstream cache, a local hit is served as always (no request at all); a miss pulls the upstream's
current revision (:func:`~tfhub_cache.cache.pull.pull`: no hub request, no inflate); when the upstream
lacks the model too, it is staged into the upstream first, under the upstream entry's lock, so the
first worker downloads and the others wait for it and then pull. ``refresh="if_changed"`` (or
``always``) asks the hub through the upstream, once per call, and pulls only when the upstream's
revision changed. The local tier is an ordinary cache: ``ls``, ``verify`` and ``prune`` work on it.
"""

from __future__ import annotations

from typing import Any

from tfhub_cache import settings
from tfhub_cache.cache.pull import PulledModel, pull
from tfhub_cache.cache.records import StagedModel
from tfhub_cache.cache.staging import lookup_entry, stage
from tfhub_cache.errors import ConfigurationError, InvalidHandleError
from tfhub_cache.handles import require_cacheable
from tfhub_cache.storage import open_storage

__all__ = ["stage_tiered"]


def stage_tiered(
    handle: str,
    cache_dir: str | None = None,
    *,
    upstream_cache: str,
    refresh: str | None = "never",
    offline: bool | None = None,
    load_format: str | None = None,
    lock_timeout: float | None = None,
    storage_options: dict[str, Any] | None = None,
    upstream_options: dict[str, Any] | None = None,
    **stage_options: Any,
) -> StagedModel | PulledModel:
    """Stage ``handle`` into ``cache_dir`` through the shared ``upstream_cache`` (see the module docstring).

    ``stage_options`` (``sha256``, ``token``, ``mirrors``, ``download_connections``...) are those of
    :func:`~tfhub_cache.cache.staging.stage` and apply to the hub download into the upstream (and the
    pin check of a local hit). ``storage_options``/``upstream_options`` go to the gs:// backend of
    each tier. The result is the local entry's record; after a pull it also has ``pulled_from``, and
    ``downloaded`` says whether this call downloaded from the hub (into the upstream).
    """
    local_dir = settings.resolve_cache_dir(cache_dir)
    upstream = settings.resolve_cache_dir(upstream_cache)
    if upstream == local_dir:
        raise ConfigurationError(
            f"upstream_cache {upstream!r} is the cache itself; name the shared gs:// cache, or unset upstream_cache."
        )
    fmt = settings.resolve_load_format(load_format)
    mode = settings.resolve_refresh(refresh)
    offline = settings.offline_from_env() if offline is None else offline
    common: dict[str, Any] = {"load_format": fmt, "lock_timeout": lock_timeout, **stage_options}
    try:
        parsed = require_cacheable(handle)
    except InvalidHandleError:
        parsed = None  # a local SavedModel directory: used in place, no tier applies
    if parsed is None or fmt == "UNCOMPRESSED":  # UNCOMPRESSED reads the hub's copy in place: nothing to tier
        return stage(handle, local_dir, refresh=mode, offline=offline, storage_options=storage_options, **common)
    local_hit = lookup_entry(open_storage(local_dir, **(storage_options or {})), parsed.text) is not None
    if offline or (local_hit and mode == "never"):
        # As any cache: a hit costs no request (and checks a pin), offline never leaves this machine.
        return stage(handle, local_dir, refresh=mode, offline=offline, storage_options=storage_options, **common)
    shared = stage(handle, upstream, refresh=mode, offline=False, storage_options=upstream_options, **common)
    pulled = pull(
        parsed.text,
        source=upstream,
        cache_dir=local_dir,
        revision=shared["revision"],
        lock_timeout=lock_timeout,
        source_options=upstream_options,
        storage_options=storage_options,
    )
    return PulledModel(**{**pulled, "downloaded": shared["downloaded"]})
