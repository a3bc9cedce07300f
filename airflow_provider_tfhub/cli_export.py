"""``tfhub-cache export``: stage a model (a cache hit when it is staged) and export it for TF Serving.

Registered into the ``tfhub-cache`` parser by :func:`add_subcommands`. Imports neither Airflow nor
TensorFlow. Prints the export record (``--json`` for scripts): ``export_path``, ``version``,
``model_name``, ``base_path``, ``sha256``, ``exported`` (and ``removed_versions``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from airflow_provider_tfhub.core import settings
from airflow_provider_tfhub.core.export import export_for_serving


def add_subcommands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model to <base-path>/<model-name>/<version>/ for TF Serving (staging it first if needed)",
    )
    p.add_argument("handle", metavar="HANDLE", help="tfhub.dev/Kaggle handle, http(s) or gs:// archive, local dir")
    p.add_argument("--base-path", required=True, metavar="DIR", help="TF Serving base path: local dir or gs://...")
    p.add_argument("--model-name", required=True, metavar="NAME", help="the model's directory under --base-path")
    p.add_argument("--version", metavar="N", help="version to write (default: the next integer)")
    p.add_argument("--keep-versions", metavar="K", help="then remove the oldest versions beyond K")
    p.add_argument("--overwrite", action="store_true", help="replace --version when it holds another model")
    p.add_argument("--cache-dir", help="local dir or gs://bucket/prefix (default: TFHUB_CACHE_DIR)")
    p.add_argument("--offline", action="store_true", help="no network; the model must be staged already")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only warnings and errors")
    p.set_defaults(func=cmd_export, refresh="never")


def cmd_export(args: argparse.Namespace) -> int:
    from airflow_provider_tfhub.cli import _stage_from_args, print_record

    staged = _stage_from_args(args)
    result = export_for_serving(
        staged,
        args.base_path,
        args.model_name,
        version=args.version,
        keep_versions=args.keep_versions,
        overwrite=args.overwrite,
        lock_timeout=settings.resolve_lock_timeout(None, os.environ.get("AIRFLOW__TFHUB__LOCK_TIMEOUT")),
    )
    print_record(result, as_json=args.json)
    return 0
