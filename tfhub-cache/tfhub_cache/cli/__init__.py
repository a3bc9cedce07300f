"""``tfhub-cache``: the core on the command line, for shells, init containers and debugging.

Imports neither Airflow nor TensorFlow. Settings come from flags, then the environment
(``TFHUB_CACHE_DIR``, ``TFHUB_MODEL_LOAD_FORMAT``, ``TFHUB_OFFLINE``, ``TFHUB_TOKEN``, ``TFHUB_MIRRORS``, and the
``AIRFLOW__TFHUB__*`` variables Airflow's own config would read; see :mod:`.options`). Failures print
one line on stderr and exit 1.

One module per group of commands: :mod:`.stage` (``stage``, ``resolve``), :mod:`.lifecycle` (``ls``,
``verify``, ``prune``), :mod:`.holds` (``hold``, ``release``, ``holds``),
:mod:`.export` (``export``). They are imported plainly: a broken import fails
loudly instead of silently removing commands.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from tfhub_cache.cli import export, holds, lifecycle, stage
from tfhub_cache.errors import TFHubError

PROG = "tfhub-cache"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Stage TF Hub models into a tensorflow_hub-compatible cache."
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for commands in (stage, lifecycle, holds, export):
        commands.add_subcommands(sub)
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
