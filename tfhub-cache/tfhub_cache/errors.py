"""Every public error of tfhub_cache, each one saying what went wrong with which input and what to do.

``permanent`` tells callers (the Airflow operators) whether retrying the same call can help: a bad
handle, a 404 or a checksum mismatch never heals by itself, a 503 may. It is always decided where
the error is raised, as a constructor argument; each class has the default that fits it.
"""

from __future__ import annotations

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
    "TFHubError",
]


class TFHubError(Exception):
    """Base class of every error raised by tfhub_cache."""

    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.permanent = permanent


class InvalidHandleError(TFHubError, ValueError):
    """The handle is not one of the accepted forms."""


class ConfigurationError(TFHubError, ValueError):
    """A setting (cache dir, load format, connection field) has an invalid value."""


class DownloadError(TFHubError):
    """The model could not be fetched from its source (transient unless said otherwise)."""

    def __init__(
        self, message: str, *, permanent: bool = False, status: int | None = None, retry_after: str | None = None
    ) -> None:
        super().__init__(message, permanent=permanent)
        self.status = status
        #: The server's ``Retry-After`` header (seconds or an HTTP date), for callers that poll again.
        self.retry_after = retry_after


class RetriesExhausted(DownloadError):
    """A transient failure that persisted through every attempt of the retry policy.

    Not permanent (a later task try may succeed, so Airflow's own retries apply), but the retry
    loop does not retry it again: the attempts were already spent.
    """


class ChecksumMismatchError(TFHubError):
    """The archive's sha256 differs from the pinned one."""


class ArchiveError(TFHubError):
    """The archive is not a valid, safe SavedModel archive (bad tar, unsafe member, no model)."""


class CacheError(TFHubError):
    """The cache location cannot be used (not writable, bucket missing, permission denied)."""


class LockTimeoutError(TFHubError):
    """Another stager held the lock for longer than we were willing to wait (a later try may get it)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message, permanent=permanent)


class OfflineError(TFHubError):
    """Offline mode was requested and the model is not in the cache."""


class DiskFullError(CacheError):
    """The cache's filesystem ran out of space while the model was being written."""


class ExportError(TFHubError):
    """The export cannot be done as asked (a version holds another model, the staged model is missing...)."""
