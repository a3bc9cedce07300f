"""The options several ``tfhub-cache`` commands share, and the settings they resolve to.

One place for each flag's spelling and help, and for the order in which a setting is looked up
(flag, then the environment: ``TFHUB_*``, then the ``AIRFLOW__TFHUB__*`` variables Airflow's own
config would read), so that ``stage``, ``ls`` and ``export`` cannot drift apart.
"""

from __future__ import annotations

import argparse
import os

from tfhub_cache import settings
from tfhub_cache.fetch import mirrors as core_mirrors

HANDLE_HELP = "tfhub.dev/Kaggle handle, http(s) or gs:// archive, local dir"


def add_handle(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("handle", metavar="HANDLE", help=HANDLE_HELP)


def add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", help="local dir or gs://bucket/prefix (default: TFHUB_CACHE_DIR)")


def add_offline(parser: argparse.ArgumentParser, help: str = "no network; fail on a cache miss") -> None:
    parser.add_argument("--offline", action="store_true", help=help)


def add_json(parser: argparse.ArgumentParser, help: str = "print JSON") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def add_quiet(parser: argparse.ArgumentParser) -> None:
    """``-q`` after the command too; SUPPRESS keeps the top-level ``tfhub-cache -q`` when it is not given."""
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only warnings and errors"
    )


def cache_dir(value: str | None) -> str:
    """--cache-dir > TFHUB_CACHE_DIR > AIRFLOW__TFHUB__CACHE_DIR > <tempdir>/tfhub_modules."""
    return settings.resolve_cache_dir(value, None, os.environ.get("AIRFLOW__TFHUB__CACHE_DIR"), origins=settings.CLI)


def upstream_cache(value: str | None) -> str | None:
    """--upstream-cache > TFHUB_UPSTREAM_CACHE > AIRFLOW__TFHUB__UPSTREAM_CACHE > none (no tier)."""
    return settings.resolve_upstream_cache(
        value, None, os.environ.get("AIRFLOW__TFHUB__UPSTREAM_CACHE"), origins=settings.CLI
    )


def load_format(value: str | None) -> str:
    """--load-format > TFHUB_MODEL_LOAD_FORMAT > AIRFLOW__TFHUB__LOAD_FORMAT > AUTO."""
    return settings.resolve_load_format(
        value, None, os.environ.get("AIRFLOW__TFHUB__LOAD_FORMAT"), origins=settings.CLI
    )


def lock_timeout() -> float:
    """TFHUB_LOCK_TIMEOUT > AIRFLOW__TFHUB__LOCK_TIMEOUT > the default."""
    return settings.resolve_lock_timeout(None, os.environ.get("AIRFLOW__TFHUB__LOCK_TIMEOUT"), origins=settings.CLI)


def mirrors() -> dict[str, str]:
    """TFHUB_MIRRORS > AIRFLOW__TFHUB__MIRRORS (a JSON object of URL prefix -> mirror prefix)."""
    return core_mirrors.resolve_mirrors(None, None, os.environ.get("AIRFLOW__TFHUB__MIRRORS"), origins=settings.CLI)


def token() -> str | None:
    """TFHUB_TOKEN (empty means none); never a flag, so it stays out of shell history and ``ps``."""
    return settings.token_from_env()
