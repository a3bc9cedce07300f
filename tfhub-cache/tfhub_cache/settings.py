"""Every ``TFHUB_*`` environment variable, its default, and which value of a setting wins.

Each variable is read here, through :func:`env_value`, and nowhere else: a value that does not
parse raises :class:`~tfhub_cache.errors.ConfigurationError` naming the variable and the value
(never a silent fall-back to the default). :data:`VARIABLES` lists them all; the settings table
in the docs is checked against it.

Settings with several sources resolve as: argument > connection extra > environment variable >
``[tfhub]`` config > default. The library itself reads only environment variables; the Airflow
layer passes the connection's extras and the ``[tfhub]`` config values in, with :class:`Origins`
saying how to name them in an error (the CLI passes the ``AIRFLOW__TFHUB__*`` environment values,
which is what Airflow's config would see, without importing Airflow).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tfhub_cache.errors import ConfigurationError
from tfhub_cache.locations import check_location

T = TypeVar("T")

#: Seconds a cache lock may go unrenewed before another stager takes it over (``lock_timeout``).
DEFAULT_LOCK_TIMEOUT = 600.0
LOAD_FORMATS = ("AUTO", "COMPRESSED", "UNCOMPRESSED")
REFRESH_MODES = ("never", "if_changed", "always")

#: Seconds without progress after which another stager's lock is taken over.
DEFAULT_LOCK_TIMEOUT = 600.0
#: Parallel ranged connections of one big download; 1 downloads with one stream.
DEFAULT_CONNECTIONS = 8
#: Most connections accepted (more only adds scattered requests; CDNs throttle per client anyway).
MAX_CONNECTIONS = 64
#: Bytes per ranged part. At most ``connections`` parts are in
#: memory, so 8 x 2 MiB = 16 MiB bounds what parallel downloads add to a process whose other
#: buffers (a gs:// cache's uploads: ~40 MiB) also count against the 150 MB budget. Measured on the
#: 497 MB benchmark archive: 8 MiB parts peaked at ~140 MB RSS for a local cache, 4 MiB at ~100 MB,
#: and with a gs:// cache 4 MiB reached 165 MB; speed differences were below the shared machine's
#: noise. At 40 MB/s per connection and 20 ms per request, 8 x 2 MiB parts still move ~230 MB/s,
#: about what inflate takes on one core (benchmarks/README.md).
DEFAULT_PART_SIZE = 2 << 20
#: Smallest part size accepted from the environment (tests use small parts on small archives).
MIN_PART_SIZE = 64 << 10
#: Tries of one HTTP operation before it surfaces as exhausted.
DEFAULT_DOWNLOAD_RETRIES = 5
#: ``(connect, read)`` seconds; the read timeout is per socket read, not for a whole download.
DEFAULT_HTTP_TIMEOUT = (15.0, 60.0)
#: Most bytes one archive may extract to (a guard against decompression bombs).
DEFAULT_MAX_EXTRACTED_BYTES = 256 * 1024**3
#: Files and directories one archive may create: real models have tens to a few thousand;
#: 200,000 empty files in a 1.2 MB archive cost 31 s and 200,000 inodes.
DEFAULT_MAX_EXTRACTED_FILES = 100_000
#: Off by default: on the 512 MB cold stage it cost more than 10% (benchmarks/README.md, "fsync").
DEFAULT_FSYNC = False

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Variable:
    """One ``TFHUB_*`` environment variable, as the settings table documents it."""

    name: str
    default: str
    meaning: str
    config_key: str | None = None
    connection_extra: str | None = None


VARIABLES: dict[str, Variable] = {
    v.name: v
    for v in (
        Variable(
            "TFHUB_CACHE_DIR",
            "<tempdir>/tfhub_modules",
            "Cache: a local directory or gs://bucket[/prefix]; tensorflow_hub reads the same variable.",
            "cache_dir",
            "cache_dir",
        ),
        Variable(
            "TFHUB_MODEL_LOAD_FORMAT",
            "AUTO",
            "AUTO or COMPRESSED stage the archive; UNCOMPRESSED resolves the hub's gs:// copy, caching nothing.",
            "load_format",
            "load_format",
        ),
        Variable(
            "TFHUB_LOCK_TIMEOUT",
            f"{DEFAULT_LOCK_TIMEOUT:g}",
            "Seconds without progress after which another stager's lock is taken over.",
            "lock_timeout",
        ),
        Variable(
            "TFHUB_MIRRORS",
            "",
            'JSON object of URL prefix to mirror prefix, e.g. {"https://tfhub.dev": "https://mirror/tfhub"}.',
            "mirrors",
            "mirrors",
        ),
        Variable("TFHUB_OFFLINE", "0", "1/true: no network at all; a model that is not staged fails."),
        Variable(
            "TFHUB_LOAD_PLAN",
            "",
            "A load plan as JSON, as a DAG hands it to the training host (pod env, venv task); "
            "tfhub_cache.loading.load(os.environ['TFHUB_LOAD_PLAN']) applies it.",
        ),
        Variable(
            "TFHUB_UPSTREAM_CACHE",
            "",
            "Shared gs://bucket/prefix cache in front of the cache dir (a local tier): a miss pulls from it.",
            "upstream_cache",
            "upstream_cache",
        ),
        Variable(
            "TFHUB_TOKEN",
            "",
            "Bearer token for the hub, read by the CLI; Airflow uses the connection's Password instead.",
        ),
        Variable(
            "TFHUB_DOWNLOAD_CONNECTIONS",
            str(DEFAULT_CONNECTIONS),
            f"Parallel ranged connections for a big archive, 1 to {MAX_CONNECTIONS}; 1 downloads with one stream.",
        ),
        Variable(
            "TFHUB_DOWNLOAD_PART_SIZE",
            str(DEFAULT_PART_SIZE),
            f"Bytes per ranged part, at least {MIN_PART_SIZE}.",
        ),
        Variable(
            "TFHUB_DOWNLOAD_RETRIES",
            str(DEFAULT_DOWNLOAD_RETRIES),
            "Tries of one request (with backoff and jitter) before the download fails.",
        ),
        Variable(
            "TFHUB_HTTP_TIMEOUT",
            ",".join(f"{t:g}" for t in DEFAULT_HTTP_TIMEOUT),
            "READ or CONNECT,READ seconds; the read timeout is per socket read, so a stalled body is resumed.",
        ),
        Variable(
            "TFHUB_MAX_EXTRACTED_BYTES",
            str(DEFAULT_MAX_EXTRACTED_BYTES),
            "Most bytes one archive may extract to (256 GiB); more fails without retries, leaving nothing behind.",
        ),
        Variable(
            "TFHUB_MAX_EXTRACTED_FILES",
            str(DEFAULT_MAX_EXTRACTED_FILES),
            "Most files and directories one archive may create; more fails without retries.",
        ),
        Variable("TFHUB_FSYNC", "0" if not DEFAULT_FSYNC else "1", "1/true: fsync a model before publishing it."),
    )
}


# -- where a value came from ----------------------------------------------------------------------


def argument(key: str) -> str:
    return f"argument `{key}`"


def connection_extra(key: str, conn_id: str | None = None) -> str:
    return f"connection `{conn_id}` extra `{key}`" if conn_id else f"connection extra `{key}`"


def environment(name: str) -> str:
    return f"environment variable `{name}`"


def config_option(key: str) -> str:
    return f"`[tfhub] {key}` in airflow.cfg"


@dataclass(frozen=True)
class Origins:
    """How the argument, connection and config layers of a setting are named in an error.

    The defaults fit Airflow (an operator argument, the ``tfhub`` connection, airflow.cfg); the
    CLI names its flags and the ``AIRFLOW__TFHUB__*`` variables instead.
    """

    conn_id: str | None = None
    cli: bool = False

    def argument(self, key: str) -> str:
        return f"flag `--{key.replace('_', '-')}`" if self.cli else argument(key)

    def connection(self, key: str) -> str:
        return connection_extra(key, self.conn_id)

    def config(self, key: str) -> str:
        return environment(f"AIRFLOW__TFHUB__{key.upper()}") if self.cli else config_option(key)


AIRFLOW = Origins()
CLI = Origins(cli=True)


def _first(*candidates: tuple[object, str]) -> tuple[str, str] | None:
    """The first candidate that is set (not None, not blank), stripped, with its origin."""
    for value, origin in candidates:
        if value is not None and str(value).strip():
            return str(value).strip(), origin
    return None


def env_text(name: str) -> str | None:
    """The stripped value of ``name`` (one of :data:`VARIABLES`), or None when unset or blank."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not a documented TFHUB_* variable; add it to settings.VARIABLES.")
    text = os.environ.get(name, "").strip()
    return text or None


def env_value(name: str, parse: Callable[[str], T], default: T) -> T:
    """``parse(value of name)``, or ``default`` when unset; a value that does not parse raises.

    ``parse`` raises :class:`ValueError` saying what a good value looks like; the error here adds
    which variable held which value.
    """
    text = env_text(name)
    if text is None:
        return default
    try:
        return parse(text)
    except ValueError as exc:
        raise ConfigurationError(f"Environment variable `{name}` is {text!r}: {exc}; fix or unset it.") from exc


def invalid(what: str, value: object, origin: str, why: str) -> ConfigurationError:
    """The error for a bad setting: which setting and value, where it came from, what a good one is."""
    return ConfigurationError(f"{what} {value!r} (from {origin}) {why}.")


# -- parsers: each raises ValueError saying what a good value is -----------------------------------


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected 1 or 0 (true/false, yes/no, on/off)")


def parse_whole(low: int, high: int | None = None, unit: str = "") -> Callable[[object], int]:
    """A parser of whole numbers from ``low`` (to ``high``)."""
    span = f"from {low} to {high}" if high is not None else f">= {low}"

    def parse(value: object) -> int:
        if isinstance(value, bool):
            number = None
        else:
            try:
                number = int(str(value).strip())
            except ValueError:
                number = None
        if number is None or number < low or (high is not None and number > high):
            raise ValueError(f"expected a whole number {span}{unit}")
        return number

    return parse


def parse_http_timeout(text: str) -> tuple[float, float]:
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or any(p <= 0 for p in parts):
        raise ValueError("expected READ or CONNECT,READ in seconds, e.g. 60 or 15,60")
    return (DEFAULT_HTTP_TIMEOUT[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


_parse_connections = parse_whole(1, MAX_CONNECTIONS, " (1 downloads with one stream)")
_parse_max_files = parse_whole(1, None, " of files")


# -- settings with several sources -----------------------------------------------------------------


def default_cache_dir() -> str:
    """tensorflow_hub's default: ``<tempdir>/tfhub_modules``."""
    return os.path.join(tempfile.gettempdir(), "tfhub_modules")


def resolve_cache_dir(
    explicit: str | None = None,
    connection: str | None = None,
    config: str | None = None,
    *,
    origins: Origins = AIRFLOW,
) -> str:
    """explicit argument > connection extra ``cache_dir`` > ``TFHUB_CACHE_DIR`` > ``[tfhub] cache_dir`` > tempdir."""
    found = _first(
        (explicit, origins.argument("cache_dir")),
        (connection, origins.connection("cache_dir")),
        (env_text("TFHUB_CACHE_DIR"), environment("TFHUB_CACHE_DIR")),
        (config, origins.config("cache_dir")),
    )
    if found is None:
        return default_cache_dir()
    value, origin = found
    return check_location(value, "Cache dir", origin)


def resolve_upstream_cache(
    explicit: str | None = None,
    connection: str | None = None,
    config: str | None = None,
    *,
    origins: Origins = AIRFLOW,
) -> str | None:
    """argument > connection extra ``upstream_cache`` > ``TFHUB_UPSTREAM_CACHE`` > ``[tfhub] upstream_cache``.

    The shared cache (``gs://bucket/prefix``) in front of which the cache dir is a local tier; None: no tier.
    """
    found = _first(
        (explicit, origins.argument("upstream_cache")),
        (connection, origins.connection("upstream_cache")),
        (env_text("TFHUB_UPSTREAM_CACHE"), environment("TFHUB_UPSTREAM_CACHE")),
        (config, origins.config("upstream_cache")),
    )
    if found is None:
        return None
    value, origin = found
    return check_location(value, "Upstream cache", origin)


def resolve_load_format(
    explicit: str | None = None,
    connection: str | None = None,
    config: str | None = None,
    *,
    origins: Origins = AIRFLOW,
) -> str:
    """argument > connection extra > ``TFHUB_MODEL_LOAD_FORMAT`` > ``[tfhub] load_format`` > AUTO (= COMPRESSED).

    Returns ``COMPRESSED`` or ``UNCOMPRESSED``; accepts any letter case (tensorflow_hub does not).
    """
    found = _first(
        (explicit, origins.argument("load_format")),
        (connection, origins.connection("load_format")),
        (env_text("TFHUB_MODEL_LOAD_FORMAT"), environment("TFHUB_MODEL_LOAD_FORMAT")),
        (config, origins.config("load_format")),
    )
    if found is None:
        return "COMPRESSED"
    value, origin = found
    upper = value.upper()
    if upper not in LOAD_FORMATS:
        raise invalid("Load format", value, origin, f"is not one of {', '.join(LOAD_FORMATS)}")
    return "COMPRESSED" if upper == "AUTO" else upper


def resolve_lock_timeout(
    explicit: float | str | None = None, config: float | str | None = None, *, origins: Origins = AIRFLOW
) -> float:
    """argument > ``TFHUB_LOCK_TIMEOUT`` > ``[tfhub] lock_timeout`` > :data:`DEFAULT_LOCK_TIMEOUT` seconds."""
    found = _first(
        (explicit, origins.argument("lock_timeout")),
        (env_text("TFHUB_LOCK_TIMEOUT"), environment("TFHUB_LOCK_TIMEOUT")),
        (config, origins.config("lock_timeout")),
    )
    if found is None:
        return DEFAULT_LOCK_TIMEOUT
    value, origin = found
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise invalid("Lock timeout", value, origin, "is not a positive number of seconds")
    return seconds


def resolve_refresh(value: str | None, *, origins: Origins = AIRFLOW) -> str:
    mode = (value or "never").strip().lower()
    if mode not in REFRESH_MODES:
        raise invalid("Refresh mode", value, origins.argument("refresh"), f"is not one of {', '.join(REFRESH_MODES)}")
    return mode


def resolve_offline(explicit: bool | None = None) -> bool:
    """argument > ``TFHUB_OFFLINE`` > False."""
    return explicit if explicit is not None else env_value("TFHUB_OFFLINE", parse_bool, False)


def offline_from_env() -> bool:
    return resolve_offline(None)


def download_connections(explicit: int | str | None = None, *, origins: Origins = AIRFLOW) -> int:
    """argument > ``TFHUB_DOWNLOAD_CONNECTIONS`` > :data:`DEFAULT_CONNECTIONS`; ``1`` means one stream."""
    if explicit is None or (isinstance(explicit, str) and not explicit.strip()):
        return env_value("TFHUB_DOWNLOAD_CONNECTIONS", _parse_connections, DEFAULT_CONNECTIONS)
    try:
        return _parse_connections(explicit)
    except ValueError as exc:
        raise invalid(
            "Download connections", explicit, origins.argument("download_connections"), f"are wrong: {exc}"
        ) from exc


def max_extracted_files(explicit: object = None, *, origins: Origins = AIRFLOW) -> int:
    """argument > ``TFHUB_MAX_EXTRACTED_FILES`` > :data:`DEFAULT_MAX_EXTRACTED_FILES`."""
    if explicit is None:
        return env_value("TFHUB_MAX_EXTRACTED_FILES", _parse_max_files, DEFAULT_MAX_EXTRACTED_FILES)
    try:
        return _parse_max_files(explicit)
    except ValueError as exc:
        raise invalid(
            "Max extracted files", explicit, origins.argument("max_extracted_files"), f"is wrong: {exc}"
        ) from exc


def max_extracted_bytes(explicit: int | None = None) -> int:
    """argument > ``TFHUB_MAX_EXTRACTED_BYTES`` > :data:`DEFAULT_MAX_EXTRACTED_BYTES`."""
    if explicit is not None:
        return explicit
    return env_value("TFHUB_MAX_EXTRACTED_BYTES", parse_whole(1, None, " of bytes"), DEFAULT_MAX_EXTRACTED_BYTES)


# -- environment-only settings ---------------------------------------------------------------------


def download_part_size() -> int:
    """``TFHUB_DOWNLOAD_PART_SIZE`` (bytes, at least :data:`MIN_PART_SIZE`) or :data:`DEFAULT_PART_SIZE`."""
    return env_value("TFHUB_DOWNLOAD_PART_SIZE", parse_whole(MIN_PART_SIZE, None, " of bytes"), DEFAULT_PART_SIZE)


def download_retries() -> int:
    """``TFHUB_DOWNLOAD_RETRIES`` (tries of one request, at least 1) or :data:`DEFAULT_DOWNLOAD_RETRIES`."""
    return env_value("TFHUB_DOWNLOAD_RETRIES", parse_whole(1, None, " of tries"), DEFAULT_DOWNLOAD_RETRIES)


def http_timeout() -> tuple[float, float]:
    """``TFHUB_HTTP_TIMEOUT``: ``READ`` or ``CONNECT,READ`` seconds, else :data:`DEFAULT_HTTP_TIMEOUT`."""
    return env_value("TFHUB_HTTP_TIMEOUT", parse_http_timeout, DEFAULT_HTTP_TIMEOUT)


def fsync() -> bool:
    """``TFHUB_FSYNC``: ``1``/``true`` forces fsync before publishing, ``0``/``false`` turns it off."""
    return env_value("TFHUB_FSYNC", parse_bool, DEFAULT_FSYNC)


def load_plan_json() -> str | None:
    """``TFHUB_LOAD_PLAN``: a load plan as JSON, as a DAG hands it to a training host (unset or blank: none)."""
    return env_text("TFHUB_LOAD_PLAN")


def token_from_env() -> str | None:
    """``TFHUB_TOKEN`` (unset or blank means none)."""
    return env_text("TFHUB_TOKEN")
