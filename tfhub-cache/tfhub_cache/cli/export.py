"""``tfhub-cache export``: stage a model (a cache hit when it is staged) and export it for TF Serving.

Imports neither Airflow nor TensorFlow. Prints the export record (``--json`` for scripts):
``export_path``, ``version``, ``model_name``, ``base_path``, ``sha256``, ``exported`` (and
``removed_versions``).
"""

from __future__ import annotations

import argparse
from typing import Any

from tfhub_cache.cli import options
from tfhub_cache.cli.output import print_record
from tfhub_cache.cli.stage import stage_from_args
from tfhub_cache.export import DEFAULT_REPLACED_MAX_AGE, NEVER, check_replaced_max_age, export_for_serving


def add_subcommands(subparsers: Any) -> None:
    """Add ``export`` to the ``tfhub-cache`` sub-parsers."""
    p = subparsers.add_parser(
        "export",
        help="export a model to <base-path>/<model-name>/<version>/ for TF Serving (staging it first if needed)",
    )
    options.add_handle(p)
    p.add_argument("--base-path", required=True, metavar="DIR", help="TF Serving base path: local dir or gs://...")
    p.add_argument("--model-name", required=True, metavar="NAME", help="the model's directory under --base-path")
    p.add_argument("--version", metavar="N", help="version to write (default: the next integer)")
    p.add_argument("--keep-versions", metavar="K", help="then remove the oldest versions beyond K")
    p.add_argument("--overwrite", action="store_true", help="replace --version when it holds another model")
    p.add_argument(
        "--replaced-max-age",
        metavar="AGE",
        default=DEFAULT_REPLACED_MAX_AGE,
        help="keep a tree --overwrite replaced (hidden, for servers still reading it) this long; a later export "
        f"removes it (default: %(default)s; 0s: the next export; {NEVER}: keep it)",
    )
    options.add_cache_dir(p)
    options.add_offline(p, help="no network; the model must be staged already")
    options.add_json(p)
    options.add_quiet(p)
    p.set_defaults(func=cmd_export, refresh="never")


def cmd_export(args: argparse.Namespace) -> int:
    # before staging: a typo must not cost a download
    replaced_max_age = check_replaced_max_age(args.replaced_max_age, "--replaced-max-age")
    staged = stage_from_args(args)
    result = export_for_serving(
        staged,
        args.base_path,
        args.model_name,
        version=args.version,
        keep_versions=args.keep_versions,
        overwrite=args.overwrite,
        lock_timeout=options.lock_timeout(),
        replaced_max_age=replaced_max_age,
    )
    print_record(result, as_json=args.json)
    return 0
