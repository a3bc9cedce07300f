"""``tfhub-cache pull``: copy a staged revision from a shared cache onto this machine's cache.

What a TPU VM, a training pod's init container or a Vertex AI job runs before loading: the model
comes from the fleet's ``gs://`` cache (no hub request, no inflate) and lands in a local cache that
``hub.load(handle)`` and ``tfhub_cache.loading.load`` read offline.
"""

from __future__ import annotations

import argparse
from typing import Any

from tfhub_cache.cache.pull import pull
from tfhub_cache.cli import options
from tfhub_cache.cli.output import print_record


def add_subcommands(subparsers: Any) -> None:
    """Add ``pull`` to the ``tfhub-cache`` sub-parsers."""
    p = subparsers.add_parser("pull", help="copy a staged revision from a shared cache into a local cache")
    options.add_handle(p)
    p.add_argument(
        "--from", dest="source", required=True, metavar="CACHE", help="the shared cache: gs://bucket/prefix or a dir"
    )
    options.add_cache_dir(p)
    p.add_argument("--revision", metavar="REV", help="revision id to pull (default: the shared cache's current one)")
    options.add_json(p, help="print the staged-model record plus pulled_from as JSON")
    options.add_quiet(p)
    p.set_defaults(func=cmd_pull)


def cmd_pull(args: argparse.Namespace) -> int:
    result = pull(
        args.handle,
        source=args.source,
        cache_dir=options.cache_dir(args.cache_dir),
        revision=args.revision,
        lock_timeout=options.lock_timeout(),
    )
    print_record(dict(result), as_json=args.json)
    return 0
