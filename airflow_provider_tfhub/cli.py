"""``tfhub-cache``: the core on the command line, for shells, init containers and debugging.

Imports neither Airflow nor TensorFlow. Settings come from flags, then the environment
(``TFHUB_CACHE_DIR``, ``TFHUB_MODEL_LOAD_FORMAT``, ``TFHUB_OFFLINE``, ``TFHUB_TOKEN``, ``TFHUB_MIRRORS``, and the
``AIRFLOW__TFHUB__*`` variables Airflow's own config would read). Failures print one line on
stderr and exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from airflow_provider_tfhub.core import mirrors, settings
from airflow_provider_tfhub.core.errors import TFHubError
from airflow_provider_tfhub.core.staging import stage

PROG = "tfhub-cache"


def cli_cache_dir(value: str | None) -> str:
    """--cache-dir > TFHUB_CACHE_DIR > AIRFLOW__TFHUB__CACHE_DIR > <tempdir>/tfhub_modules."""
    return settings.resolve_cache_dir(value, None, os.environ.get("AIRFLOW__TFHUB__CACHE_DIR"))


def cli_mirrors() -> dict[str, str]:
    """TFHUB_MIRRORS > AIRFLOW__TFHUB__MIRRORS (a JSON object of URL prefix -> mirror prefix)."""
    return mirrors.resolve_mirrors(None, None, os.environ.get("AIRFLOW__TFHUB__MIRRORS"))


def _stage_from_args(args: argparse.Namespace, *, load_format: str | None = None) -> dict[str, Any]:
    return dict(
        stage(
            args.handle,
            cli_cache_dir(args.cache_dir),
            sha256=getattr(args, "sha256", None),
            token=os.environ.get("TFHUB_TOKEN") or None,
            load_format=settings.resolve_load_format(
                load_format or getattr(args, "load_format", None),
                None,
                os.environ.get("AIRFLOW__TFHUB__LOAD_FORMAT"),
            ),
            refresh=getattr(args, "refresh", "never"),
            offline=True if getattr(args, "offline", False) else None,
            lock_timeout=settings.resolve_lock_timeout(None, os.environ.get("AIRFLOW__TFHUB__LOCK_TIMEOUT")),
            mirrors=cli_mirrors(),
        )
    )


def print_record(result: Mapping[str, Any], *, as_json: bool) -> None:
    """A result dict as JSON (``--json``) or as aligned ``key  value`` lines: one format for every command."""
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")


def _cmd_stage(args: argparse.Namespace) -> int:
    print_record(_stage_from_args(args), as_json=args.json)
    return 0


def _cmd_resolve(args: argparse.Namespace) -> int:
    result = _stage_from_args(args, load_format="UNCOMPRESSED" if args.uncompressed else None)
    print(result["path"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Stage TF Hub models into a tensorflow_hub-compatible cache."
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("handle", metavar="HANDLE", help="tfhub.dev/Kaggle handle, http(s) or gs:// archive, local dir")
        p.add_argument("--cache-dir", help="local dir or gs://bucket/prefix (default: TFHUB_CACHE_DIR)")
        p.add_argument("--offline", action="store_true", help="no network; fail on a cache miss")
        p.add_argument("--refresh", choices=settings.REFRESH_MODES, default="never")
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only warnings and errors")

    p_stage = sub.add_parser("stage", help="stage a model and print the staged-model record")
    common(p_stage)
    p_stage.add_argument("--sha256", metavar="HEX", help="expected sha256 of the archive")
    p_stage.add_argument("--load-format", choices=settings.LOAD_FORMATS, type=str.upper)
    p_stage.add_argument("--json", action="store_true", help="print JSON")
    p_stage.set_defaults(func=_cmd_stage)

    p_resolve = sub.add_parser("resolve", help="stage if needed and print only the model path")
    common(p_resolve)
    p_resolve.add_argument("--sha256", metavar="HEX", help="expected sha256 of the archive")
    p_resolve.add_argument(
        "--uncompressed", action="store_true", help="print the hub's gs:// location (UNCOMPRESSED); stage nothing"
    )
    p_resolve.set_defaults(func=_cmd_resolve)

    # ls / verify / prune and export live in their own modules
    for module in ("airflow_provider_tfhub.cli_lifecycle", "airflow_provider_tfhub.cli_export"):
        try:
            extra = importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        extra.add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except TFHubError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, never a traceback
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
