"""``tfhub-cache hold | release | holds``: keep a revision in use safe from ``prune``, from any shell.

A training image without Airflow holds the revision it loads before training and releases it
after; ``holds`` lists what is held. See :mod:`tfhub_cache.cache.holds`. Imports neither Airflow
nor TensorFlow.
"""

from __future__ import annotations

import argparse
from typing import Any

from tfhub_cache.cache import holds
from tfhub_cache.cli import options
from tfhub_cache.cli.output import print_json, print_record, print_table
from tfhub_cache.storage import open_storage


def add_subcommands(subparsers: Any) -> None:
    """Add ``hold``, ``release`` and ``holds`` to the ``tfhub-cache`` sub-parsers."""
    p_hold = subparsers.add_parser("hold", help="keep a revision from being pruned while HOLDER uses it")
    options.add_handle(p_hold)
    options.add_cache_dir(p_hold)
    _add_holder(p_hold)
    p_hold.add_argument(
        "--ttl",
        required=True,
        metavar="DURATION",
        help="the hold expires after this, e.g. 12h, 7d (then it protects nothing)",
    )
    p_hold.add_argument("--revision", metavar="R", help="the revision to hold (default: the current one)")
    options.add_json(p_hold)
    options.add_quiet(p_hold)
    p_hold.set_defaults(func=cmd_hold)

    p_release = subparsers.add_parser("release", help="remove HOLDER's holds on a model")
    options.add_handle(p_release)
    options.add_cache_dir(p_release)
    _add_holder(p_release)
    p_release.add_argument("--revision", metavar="R", help="only this revision (default: every hold of HOLDER)")
    options.add_json(p_release)
    options.add_quiet(p_release)
    p_release.set_defaults(func=cmd_release)

    p_holds = subparsers.add_parser("holds", help="list the holds in a cache (expired ones included)")
    options.add_cache_dir(p_holds)
    options.add_json(p_holds, help="print JSON instead of a table")
    options.add_quiet(p_holds)
    p_holds.set_defaults(func=cmd_holds)


def _add_holder(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--holder", required=True, metavar="NAME", help="who uses the revision, e.g. a job name")


def cmd_hold(args: argparse.Namespace) -> int:
    storage = open_storage(options.cache_dir(args.cache_dir))
    record = holds.hold(storage, args.handle, holder=args.holder, ttl=args.ttl, revision=args.revision)
    print_record(record, as_json=args.json)
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    storage = open_storage(options.cache_dir(args.cache_dir))
    released = holds.release(storage, args.handle, holder=args.holder, revision=args.revision)
    if args.json:
        print_json(released)
    elif released:
        for record in released:
            print(f"released {record['revision']} of {record['handle']} ({record['holder']})")
    else:
        print(f"{args.holder} held nothing of {args.handle}")
    return 0


def cmd_holds(args: argparse.Namespace) -> int:
    storage = open_storage(options.cache_dir(args.cache_dir))
    found = holds.list_holds(storage)
    if args.json:
        print_json(found)
        return 0
    rows = [
        [h["handle"], h["revision"], h["holder"], h["expires_at"], "expired" if h["expired"] else "active"]
        for h in found
    ]
    print(f"{storage.location()}: {len(found)} holds")
    if rows:
        print_table(["HANDLE", "REVISION", "HOLDER", "EXPIRES", "STATE"], rows)
    return 0
