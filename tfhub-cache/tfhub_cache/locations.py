"""Where a cache or an export lives: a local directory or ``gs://bucket[/prefix]``, checked in one place.

The cache dir (argument, connection, environment, config) and an export's ``base_path`` accept the
same two kinds of location and are refused alike; the ``gs://`` backend splits its URL with the same
rule. A base module: settings, storage and export all use it.
"""

from __future__ import annotations

from tfhub_cache.errors import ConfigurationError

GS_PREFIX = "gs://"
#: What to write instead, for every message about a bad location.
LOCATION_ADVICE = "use a local directory or gs://<bucket>[/prefix]"


def is_gs_url(location: str) -> bool:
    """True for a ``gs://`` location."""
    return location.startswith(GS_PREFIX)


def parse_gs_url(url: str) -> tuple[str, str]:
    """Split ``gs://bucket/some/prefix`` into ``("bucket", "some/prefix")`` (prefix without slashes at the ends)."""
    if not is_gs_url(url):
        raise ConfigurationError(f"{url!r} is not a gs:// URL; use gs://<bucket>[/prefix].")
    bucket, _, prefix = url[len(GS_PREFIX) :].partition("/")
    if not bucket:
        raise ConfigurationError(f"{url!r} names no bucket; use gs://<bucket>[/prefix].")
    return bucket, prefix.strip("/")


def check_location(value: object, what: str, origin: str | None = None) -> str:
    """``value`` as a location (``gs://`` without trailing slashes; a local path as given), or a clear error.

    ``what`` names the input in the message (``Cache dir``, ``base_path``); ``origin`` says where the
    value came from (``environment variable `TFHUB_CACHE_DIR```), when a setting has several sources.
    """
    named = f"{what} {value!r}" + (f" (from {origin})" if origin else "")
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{named} is empty; {LOCATION_ADVICE}.")
    text = value.strip()
    if is_gs_url(text):
        if len(text.rstrip("/")) <= len(GS_PREFIX):
            raise ConfigurationError(f"{named} names no bucket; use gs://<bucket>[/prefix].")
        return text.rstrip("/")
    if "://" in text:
        raise ConfigurationError(f"{named} has an unsupported scheme; {LOCATION_ADVICE}.")
    return text


__all__ = ["GS_PREFIX", "LOCATION_ADVICE", "check_location", "is_gs_url", "parse_gs_url"]
