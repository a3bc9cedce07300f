"""Errors of the core, each one saying what went wrong with which input and what to do about it.

``permanent`` tells callers (the Airflow operators) whether retrying the same call can help: a bad
handle, a 404 or a checksum mismatch never heals by itself, a 503 may.
"""

from __future__ import annotations


class TFHubError(Exception):
    """Base class of every error raised by the core."""

    permanent: bool = True


class InvalidHandleError(TFHubError, ValueError):
    """The handle is not one of the accepted forms."""


class ConfigurationError(TFHubError, ValueError):
    """A setting (cache dir, load format, connection field) has an invalid value."""


class DownloadError(TFHubError):
    """The model could not be fetched from its source."""

    def __init__(
        self, message: str, *, permanent: bool = False, status: int | None = None, retry_after: str | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status
        #: The server's ``Retry-After`` header (seconds or an HTTP date), for callers that poll again.
        self.retry_after = retry_after


class ChecksumMismatchError(TFHubError):
    """The archive's sha256 differs from the pinned one."""


class ArchiveError(TFHubError):
    """The archive is not a valid, safe SavedModel archive (bad tar, unsafe member, no model)."""


class CacheError(TFHubError):
    """The cache location cannot be used (not writable, bucket missing, permission denied)."""


class LockTimeoutError(TFHubError):
    """Another stager held the lock for longer than we were willing to wait."""

    permanent = False


class OfflineError(TFHubError):
    """Offline mode was requested and the model is not in the cache."""


class DiskFullError(CacheError):
    """The cache's filesystem ran out of space while the model was being written."""
