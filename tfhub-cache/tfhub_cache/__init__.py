"""Stage TensorFlow Hub models into a cache that tensorflow_hub itself can use.

The package is laid out as the pipeline a model goes through: ``fetch`` (HTTP with the TF Hub
protocol, ranged parts, mirrors, update checks), ``archive`` (inflate and safe extraction),
``storage`` (local directories and ``gs://``), ``cache`` (layout, locks, revisions, staging,
inventory), then ``export`` (TF Serving) and ``loading`` (TensorFlow, only when a model is loaded).
Nothing here imports Airflow; TensorFlow is imported only by :mod:`tfhub_cache.loading`.

The functions a program calls are here (:data:`__all__`): :func:`stage` a model, :func:`lookup`
a staged one without network, :func:`ls`, :func:`verify` and :func:`prune` a cache,
:func:`export_for_serving` (a staged model into a TF Serving model base path; not ``export``, which
is the name of its module), and the errors they raise (all :class:`TFHubError`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tfhub_cache.errors import (
    ArchiveError,
    CacheError,
    ChecksumMismatchError,
    ConfigurationError,
    DiskFullError,
    DownloadError,
    ExportError,
    InvalidHandleError,
    LockTimeoutError,
    OfflineError,
    RetriesExhausted,
    TFHubError,
)

if TYPE_CHECKING:
    from tfhub_cache.api import export_for_serving, lookup, ls, prune, stage, verify
    from tfhub_cache.cache.options import StageOptions
    from tfhub_cache.cache.pull import pull

__version__ = "0.2.0"
"""The version of both distributions (tfhub-cache and airflow-provider-tfhub): one release."""

__all__ = [
    "ArchiveError",
    "CacheError",
    "ChecksumMismatchError",
    "ConfigurationError",
    "DiskFullError",
    "DownloadError",
    "ExportError",
    "InvalidHandleError",
    "LockTimeoutError",
    "OfflineError",
    "RetriesExhausted",
    "StageOptions",
    "TFHubError",
    "__version__",
    "export_for_serving",
    "lookup",
    "ls",
    "prune",
    "pull",
    "stage",
    "verify",
]

#: Imported on first use, so that ``import tfhub_cache`` stays cheap (no HTTP or GCS client).
_LAZY = {
    "stage": "tfhub_cache.api",
    "lookup": "tfhub_cache.api",
    "ls": "tfhub_cache.api",
    "verify": "tfhub_cache.api",
    "prune": "tfhub_cache.api",
    "export_for_serving": "tfhub_cache.api",
    "StageOptions": "tfhub_cache.cache.options",
    "pull": "tfhub_cache.cache.pull",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tfhub_cache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
