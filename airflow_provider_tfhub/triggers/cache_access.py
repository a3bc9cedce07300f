"""How a trigger reaches its cache from the triggerer's event loop, without blocking it.

Settings come from the hook's async path; a local storage touches the disk, so it is opened in a
thread; a ``gs://`` storage builds its client through the hook (GCP connection) off the loop. Entry
reads go to a thread too. Every trigger (deferral and event) reads its cache through these two.
"""

from __future__ import annotations

import asyncio
from typing import Any

from asgiref.sync import sync_to_async

from airflow_provider_tfhub.hooks.tfhub import HubSettings, TFHubHook
from tfhub_cache import settings
from tfhub_cache.cache.entries import lookup_entry
from tfhub_cache.handles import parse_handle
from tfhub_cache.locations import is_gs_url
from tfhub_cache.storage import Storage, open_storage


async def open_cache(tfhub_conn_id: str, cache_dir: str | None) -> tuple[HubSettings, Storage]:
    """The connection's settings and the cache (``cache_dir``, else the connection's, env, config)."""
    hook = TFHubHook(tfhub_conn_id=tfhub_conn_id)
    hub = await hook.aget_settings()
    resolved = settings.resolve_cache_dir(cache_dir, hub.cache_dir, hub.config_cache_dir)
    if not is_gs_url(resolved):
        return hub, await asyncio.to_thread(open_storage, resolved)
    storage: Storage = await sync_to_async(hook.open_storage)(resolved)
    return hub, storage


async def read_entry(storage: Storage, handle: str) -> dict[str, Any] | None:
    """``handle``'s staged-model record in ``storage`` (None: not staged), read in a thread."""
    entry = await asyncio.to_thread(lookup_entry, storage, parse_handle(handle).text)
    return None if entry is None else dict(entry)
