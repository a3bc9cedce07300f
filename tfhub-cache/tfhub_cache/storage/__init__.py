"""Storage backends behind one interface, so the staging flow is written once for local and gs:// caches."""

from __future__ import annotations

from typing import Any

from tfhub_cache.locations import is_gs_url
from tfhub_cache.storage.base import FileRecord, ObjectStat, Storage, TreeSink


def open_storage(cache_dir: str, **options: Any) -> Storage:
    """Return the backend for ``cache_dir``: GCS for ``gs://bucket/prefix``, the local filesystem otherwise.

    ``options`` go to the GCS backend (``client``, ``credentials``, ``project``, ``max_workers``...).
    The GCS backend is imported only when asked for, so local staging never loads the GCS client.
    """
    if is_gs_url(cache_dir):
        from tfhub_cache.storage.gcs import GCSStorage

        return GCSStorage(cache_dir, **options)
    from tfhub_cache.storage.local import LocalStorage

    return LocalStorage(cache_dir)


__all__ = ["FileRecord", "ObjectStat", "Storage", "TreeSink", "open_storage"]
