"""``tfhub-cache stage | resolve``: stage a model from a shell and print its record or only its path.

:func:`stage_from_args` is also how ``export`` stages first, so both read the same flags and
environment (see :mod:`tfhub_cache.cli.options`).
"""

from __future__ import annotations

import argparse
from typing import Any

from tfhub_cache import settings
from tfhub_cache.cache.options import StageOptions
from tfhub_cache.cache.tiers import stage_tiered
from tfhub_cache.cli import options as options_mod
from tfhub_cache.cli.output import print_record


def add_subcommands(subparsers: Any) -> None:
    """Add ``stage`` and ``resolve`` to the ``tfhub-cache`` sub-parsers."""

    def common(p: argparse.ArgumentParser) -> None:
        options_mod.add_handle(p)
        options_mod.add_cache_dir(p)
        options_mod.add_offline(p)
        p.add_argument("--refresh", choices=settings.REFRESH_MODES, default="never")
        options_mod.add_quiet(p)

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
    options_mod.add_json(p_stage)
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
    options = StageOptions(
        sha256=getattr(args, "sha256", None),
        token=options_mod.token(),
        load_format=options_mod.load_format(load_format or getattr(args, "load_format", None)),
        refresh=getattr(args, "refresh", "never"),
        offline=True if getattr(args, "offline", False) else None,
        lock_timeout=options_mod.lock_timeout(),
        mirrors=options_mod.mirrors() or None,
        upstream_cache=options_mod.upstream_cache(getattr(args, "upstream_cache", None)),
    )
    return dict(stage_tiered(args.handle, options_mod.cache_dir(args.cache_dir), options=options))


def cmd_stage(args: argparse.Namespace) -> int:
    print_record(stage_from_args(args), as_json=args.json)
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    result = stage_from_args(args, load_format="UNCOMPRESSED" if args.uncompressed else None)
    print(result["path"])
    return 0
