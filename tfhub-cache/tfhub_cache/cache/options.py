"""How to stage a model: every choice but the handle and the cache dir, in one frozen value.

The operator, the hook and the CLI build one :class:`StageOptions` and hand it down to the stager,
instead of a dozen keyword arguments travelling through four layers. Values are checked when the
options are built (a bad pin or refresh mode fails before anything is fetched); a field left at
None is decided later, in precedence order: the Airflow hook fills what the connection and the
``[tfhub]`` config say (:meth:`StageOptions.filled`), then :meth:`StageOptions.resolved` takes the
environment and the defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tfhub_cache import settings
from tfhub_cache.errors import ConfigurationError
from tfhub_cache.fetch.mirrors import parse_mirrors, resolve_mirrors
from tfhub_cache.retry import RetryPolicy

__all__ = ["StageOptions", "check_sha256"]


def check_sha256(value: str | None) -> str | None:
    """A sha256 pin as 64 lower-case hex digits (None or blank: no pin)."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ConfigurationError(
            f"sha256={value!r} (from {settings.argument('sha256')}) is not a 64-character hex digest."
        )
    return text


@dataclass(frozen=True)
class StageOptions:
    """The choices of one staging; None means "not given here" (a later source or the default decides).

    :param sha256: pin of the archive; a mismatch fails permanently and leaves nothing behind.
    :param token: bearer token for the hub (or the mirror's host); never printed (``repr`` hides it).
    :param load_format: ``AUTO``/``COMPRESSED`` stage; ``UNCOMPRESSED`` resolves the hub's gs:// copy.
    :param refresh: ``never`` (a cached model costs no request), ``if_changed`` (one conditional
        request) or ``always``.
    :param offline: forbid any network access (default ``TFHUB_OFFLINE``).
    :param lock_timeout: seconds without progress after which another stager's lock is taken over.
    :param retry: retries of each request (default: ``TFHUB_DOWNLOAD_RETRIES`` attempts).
    :param storage_options: keyword arguments of the cache's storage (GCS credentials, project).
    :param max_extracted_bytes: most bytes the archive may extract to (``TFHUB_MAX_EXTRACTED_BYTES``).
    :param progress_interval: seconds between download progress lines.
    :param mirrors: URL prefix -> mirror prefix (dict or JSON); only the fetched URL changes.
    :param download_connections: parallel ranged connections for big archives; 1: one stream.
    :param max_extracted_files: most files and directories the archive may create.
    :param upstream_cache: a shared ``gs://`` cache in front of the cache dir, which becomes its local
        tier (:mod:`tfhub_cache.cache.tiers`); the single-cache stager itself ignores it.
    :param upstream_storage_options: keyword arguments of the upstream cache's storage.
    """

    sha256: str | None = None
    token: str | None = field(default=None, repr=False)
    load_format: str | None = None
    refresh: str = "never"
    offline: bool | None = None
    lock_timeout: float | None = None
    retry: RetryPolicy | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    max_extracted_bytes: int | None = None
    progress_interval: float = 5.0
    mirrors: Mapping[str, str] | str | None = None
    download_connections: int | None = None
    max_extracted_files: int | None = None
    upstream_cache: str | None = None
    upstream_storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        def normalise(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        normalise("sha256", check_sha256(self.sha256))
        normalise("refresh", settings.resolve_refresh(self.refresh))
        if self.load_format is not None and str(self.load_format).strip():
            normalise("load_format", _check_load_format(self.load_format))
        else:
            normalise("load_format", None)
        if self.lock_timeout is not None:
            normalise("lock_timeout", settings.resolve_lock_timeout(self.lock_timeout))
        if isinstance(self.mirrors, str | Mapping):
            normalise("mirrors", parse_mirrors(self.mirrors, setting="Argument `mirrors`") or None)
        if self.download_connections is not None:
            normalise("download_connections", settings.download_connections(self.download_connections))
        if self.max_extracted_files is not None:
            normalise("max_extracted_files", settings.max_extracted_files(self.max_extracted_files))
        normalise("storage_options", dict(self.storage_options))
        normalise("upstream_storage_options", dict(self.upstream_storage_options))
        if self.upstream_cache is not None and str(self.upstream_cache).strip():
            normalise("upstream_cache", settings.resolve_upstream_cache(self.upstream_cache))
        else:
            normalise("upstream_cache", None)

    @property
    def mirror_map(self) -> dict[str, str]:
        """The mirrors as a mapping (checked JSON text is parsed when the options are built)."""
        return dict(self.mirrors) if isinstance(self.mirrors, Mapping) else {}

    def filled(self, **layers: Any) -> StageOptions:
        """A copy with the given fields replaced (the hook's connection and config layer)."""
        return dataclasses.replace(self, **layers)

    def resolved(self) -> StageOptions:
        """A copy with every field that is still None taken from the environment or its default."""
        return dataclasses.replace(
            self,
            load_format=settings.resolve_load_format(self.load_format),
            offline=settings.resolve_offline(self.offline),
            lock_timeout=settings.resolve_lock_timeout(self.lock_timeout),
            retry=self.retry or RetryPolicy.from_env(),
            max_extracted_bytes=settings.max_extracted_bytes(self.max_extracted_bytes),
            mirrors=resolve_mirrors(self.mirrors),
            download_connections=settings.download_connections(self.download_connections),
            max_extracted_files=settings.max_extracted_files(self.max_extracted_files),
            upstream_cache=settings.resolve_upstream_cache(self.upstream_cache),
        )


def _check_load_format(value: str) -> str:
    upper = str(value).strip().upper()
    if upper not in settings.LOAD_FORMATS:
        raise settings.invalid(
            "Load format", value, settings.argument("load_format"), f"is not one of {', '.join(settings.LOAD_FORMATS)}"
        )
    return upper
