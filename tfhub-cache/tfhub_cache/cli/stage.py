"""``tfhub-cache stage | resolve``: stage a model from a shell and print its record or only its path.

:func:`stage_from_args` is also how ``export`` stages first, so both read the same flags and
environment (see :mod:`tfhub_cache.cli.options`).
"""

from __future__ import annotations

import argparse
from typing import Any

from tfhub_cache import settings
from tfhub_cache.cache.staging import stage
from tfhub_cache.cache.tiers import stage_tiered
from tfhub_cache.cli import options
from tfhub_cache.cli.output import print_record


def add_subcommands(subparsers: Any) -> None:
    """Add ``stage`` and ``resolve`` to the ``tfhub-cache`` sub-parsers."""

    def common(p: argparse.ArgumentParser) -> None:
        options.add_handle(p)
        options.add_cache_dir(p)
        options.add_offline(p)
        p.add_argument("--refresh", choices=settings.REFRESH_MODES, default="never")
        options.add_quiet(p)

    p_stage = subparsers.add_parser("stage", help="stage a model and print the staged-model record")
    common(p_stage)
    p_stage.add_argument("--sha256", metavar="HEX", help="expected sha256 of the archive")
    p_stage.add_argument("--load-format", choices=settings.LOAD_FORMATS, type=str.upper)
    p_stage.add_argument(
        "--upstream-cache",
        metavar="CACHE",
        help="shared gs://bucket/prefix cache in front of --cache-dir: a miss pulls from it, staging it there "
        "first if needed (default: TFHUB_UPSTREAM_CACHE)",
    )
    options.add_json(p_stage)
    p_stage.set_defaults(func=cmd_stage)

    p_resolve = subparsers.add_parser("resolve", help="stage if needed and print only the model path")
    common(p_resolve)
    p_resolve.add_argument("--sha256", metavar="HEX", help="expected sha256 of the archive")
    p_resolve.add_argument(
        "--uncompressed", action="store_true", help="print the hub's gs:// location (UNCOMPRESSED); stage nothing"
    )
    p_resolve.set_defaults(func=cmd_resolve)


def stage_from_args(args: argparse.Namespace, *, load_format: str | None = None) -> dict[str, Any]:
    """Stage ``args.handle`` with the flags this command has (``export`` has no ``--sha256``...)."""
    cache_dir = options.cache_dir(args.cache_dir)
    kwargs: dict[str, Any] = {
        "sha256": getattr(args, "sha256", None),
        "token": options.token(),
        "load_format": options.load_format(load_format or getattr(args, "load_format", None)),
        "refresh": getattr(args, "refresh", "never"),
        "offline": True if getattr(args, "offline", False) else None,
        "lock_timeout": options.lock_timeout(),
        "mirrors": options.mirrors(),
    }
    upstream = options.upstream_cache(getattr(args, "upstream_cache", None))
    if upstream is not None:
        return dict(stage_tiered(args.handle, cache_dir, upstream_cache=upstream, **kwargs))
    return dict(stage(args.handle, cache_dir, **kwargs))


def cmd_stage(args: argparse.Namespace) -> int:
    print_record(stage_from_args(args), as_json=args.json)
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    result = stage_from_args(args, load_format="UNCOMPRESSED" if args.uncompressed else None)
    print(result["path"])
    return 0
