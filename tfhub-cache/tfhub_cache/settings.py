"""Which cache dir, load format and lock timeout apply: first that is set wins.

The core reads only environment variables; the Airflow layer passes the connection's extras and
the ``[tfhub]`` config values in (the CLI passes ``AIRFLOW__TFHUB__*`` environment values, which is
what Airflow's config would see, without importing Airflow).
"""

from __future__ import annotations

import os
import tempfile

from tfhub_cache.cache.locks import DEFAULT_LOCK_TIMEOUT
from tfhub_cache.errors import ConfigurationError

LOAD_FORMATS = ("AUTO", "COMPRESSED", "UNCOMPRESSED")
REFRESH_MODES = ("never", "if_changed", "always")


def _first(*values: object) -> str | None:
    for value in values:
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def default_cache_dir() -> str:
    """tensorflow_hub's default: ``<tempdir>/tfhub_modules``."""
    return os.path.join(tempfile.gettempdir(), "tfhub_modules")


def resolve_cache_dir(explicit: str | None = None, connection: str | None = None, config: str | None = None) -> str:
    """explicit argument > connection extra ``cache_dir`` > ``TFHUB_CACHE_DIR`` > ``[tfhub] cache_dir`` > tempdir."""
    value = _first(explicit, connection, os.environ.get("TFHUB_CACHE_DIR"), config) or default_cache_dir()
    if value.startswith("gs://") and len(value.rstrip("/")) <= len("gs://"):
        raise ConfigurationError(f"Cache dir {value!r} names no bucket; use gs://<bucket>[/prefix].")
    if "://" in value and not value.startswith("gs://"):
        raise ConfigurationError(
            f"Cache dir {value!r} has an unsupported scheme; use a local directory or gs://<bucket>[/prefix]."
        )
    return value.rstrip("/") if value.startswith("gs://") else value


def resolve_upstream_cache(
    explicit: str | None = None, connection: str | None = None, config: str | None = None
) -> str | None:
    """argument > connection extra ``upstream_cache`` > ``TFHUB_UPSTREAM_CACHE`` > ``[tfhub] upstream_cache``.

    The shared cache (``gs://bucket/prefix``) in front of which the cache dir is a local tier; None: no tier.
    """
    value = _first(explicit, connection, os.environ.get("TFHUB_UPSTREAM_CACHE"), config)
    if value is None:
        return None
    try:
        return resolve_cache_dir(value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"upstream_cache: {exc}") from exc


def resolve_load_format(explicit: str | None = None, connection: str | None = None, config: str | None = None) -> str:
    """argument > connection extra > ``TFHUB_MODEL_LOAD_FORMAT`` > ``[tfhub] load_format`` > AUTO (= COMPRESSED).

    Returns ``COMPRESSED`` or ``UNCOMPRESSED``; accepts any letter case (tensorflow_hub does not).
    """
    value = _first(explicit, connection, os.environ.get("TFHUB_MODEL_LOAD_FORMAT"), config) or "AUTO"
    upper = value.upper()
    if upper not in LOAD_FORMATS:
        raise ConfigurationError(f"Load format {value!r} is not one of {', '.join(LOAD_FORMATS)}.")
    return "COMPRESSED" if upper == "AUTO" else upper


def resolve_lock_timeout(explicit: float | str | None = None, config: float | str | None = None) -> float:
    value = _first(explicit, os.environ.get("TFHUB_LOCK_TIMEOUT"), config)
    if value is None:
        return DEFAULT_LOCK_TIMEOUT
    try:
        seconds = float(value)
    except ValueError as exc:
        raise ConfigurationError(f"lock_timeout {value!r} is not a number of seconds.") from exc
    if seconds <= 0:
        raise ConfigurationError(f"lock_timeout {value!r} must be positive.")
    return seconds


def resolve_refresh(value: str | None) -> str:
    mode = (value or "never").strip().lower()
    if mode not in REFRESH_MODES:
        raise ConfigurationError(f"refresh={value!r} is not one of {', '.join(REFRESH_MODES)}.")
    return mode


def offline_from_env() -> bool:
    return os.environ.get("TFHUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
