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

import dataclasses
from typing import Any

from tfhub_cache import settings
from tfhub_cache.cache.entries import lookup_entry
from tfhub_cache.cache.options import StageOptions
from tfhub_cache.cache.pull import PulledModel, pull
from tfhub_cache.cache.records import StagedModel
from tfhub_cache.cache.staging import stage
from tfhub_cache.errors import ConfigurationError, InvalidHandleError
from tfhub_cache.handles import require_cacheable
from tfhub_cache.storage import open_storage

__all__ = ["stage_tiered"]


def stage_tiered(
    handle: str, cache_dir: str | None = None, *, options: StageOptions | None = None, **choices: Any
) -> StagedModel | PulledModel:
    """Stage ``handle`` into ``cache_dir``, through ``options.upstream_cache`` when one is set.

    Without an upstream (argument or ``TFHUB_UPSTREAM_CACHE``) this is
    :func:`~tfhub_cache.cache.staging.stage`. With one, see the module docstring: the hub download
    (sha256 pin, token, mirrors, connections) goes into the upstream, with
    ``options.upstream_storage_options``; the local tier gets a pull. The result is the local entry's
    record; after a pull it also has ``pulled_from``, and ``downloaded`` says whether this call
    downloaded from the hub (into the upstream).
    """
    if options is not None and choices:
        given = ", ".join(sorted(choices))
        raise TypeError(f"stage_tiered() takes options= or keyword choices, not both (got {given}).")
    opts = (options if options is not None else StageOptions(**choices)).resolved()
    if opts.upstream_cache is None:
        return stage(handle, cache_dir, options=opts)
    local_dir = settings.resolve_cache_dir(cache_dir)
    upstream = opts.upstream_cache
    if upstream == local_dir:
        raise ConfigurationError(
            f"upstream_cache {upstream!r} is the cache itself; name the shared gs:// cache, or unset upstream_cache."
        )
    try:
        parsed = require_cacheable(handle)
    except InvalidHandleError:
        parsed = None  # a local SavedModel directory: used in place, no tier applies
    if parsed is None or opts.load_format == "UNCOMPRESSED":  # UNCOMPRESSED reads the hub's copy in place
        return stage(handle, local_dir, options=opts)
    local_hit = lookup_entry(open_storage(local_dir, **opts.storage_options), parsed.text) is not None
    if opts.offline or (local_hit and opts.refresh == "never"):
        # As any cache: a hit costs no request (and checks a pin), offline never leaves this machine.
        return stage(handle, local_dir, options=opts)
    upstream_opts = dataclasses.replace(opts, storage_options=opts.upstream_storage_options, offline=False)
    shared = stage(handle, upstream, options=upstream_opts)
    pulled = pull(
        parsed.text,
        source=upstream,
        cache_dir=local_dir,
        revision=shared["revision"],
        lock_timeout=opts.lock_timeout,
        source_options=dict(opts.upstream_storage_options),
        storage_options=dict(opts.storage_options),
    )
    return PulledModel(**{**pulled, "downloaded": shared["downloaded"]})
