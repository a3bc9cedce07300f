"""``tfhub-cache``: the library on the command line, for shells, init containers and debugging.

Imports neither Airflow nor TensorFlow. Settings come from flags, then the environment
(``TFHUB_CACHE_DIR``, ``TFHUB_MODEL_LOAD_FORMAT``, ``TFHUB_OFFLINE``, ``TFHUB_TOKEN``, ``TFHUB_MIRRORS``, and the
``AIRFLOW__TFHUB__*`` variables Airflow's own config would read; see :mod:`.options`). Failures print
one line on stderr, in CLI terms (see :mod:`.wording`). Exit codes:

- 0: done (``verify``: every entry intact; ``prune``: the size budget is met);
- 1: an error (bad value, download or cache failure), ``verify`` found damage, or ``prune`` could
  not meet the size budget;
- 2: a usage error (unknown command or flag, missing argument);
- 130: interrupted (Ctrl-C).

One module per group of commands: :mod:`.stage` (``stage``, ``resolve``), :mod:`.lifecycle` (``ls``,
``verify``, ``prune``), :mod:`.holds` (``hold``, ``release``, ``holds``), :mod:`.pull` (``pull``),
:mod:`.export` (``export``). They are imported plainly: a broken import fails
loudly instead of silently removing commands.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from tfhub_cache.cli import export, holds, lifecycle, pull, stage
from tfhub_cache.cli.wording import for_cli
from tfhub_cache.errors import TFHubError

PROG = "tfhub-cache"
USAGE_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line on stderr (with where to find help), exit code 2, not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Stage TF Hub models into a tensorflow_hub-compatible cache.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for commands in (stage, pull, lifecycle, holds, export):
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
    # Google's auth library warns that it probed for credentials before the error that says so: an error
    # stays one line
    logging.getLogger("google.auth").setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except TFHubError as exc:
        print(f"{PROG}: error: {for_cli(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, never a traceback
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
