"""How ``tfhub-cache`` prints: records as ``key  value`` lines, tables, or JSON with ``--json``.

One printer per shape, so every command that prints a record (``stage``, ``export``) or a table
(``ls``, ``verify``, ``prune``) looks the same and scripts get the same JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def print_record(result: Mapping[str, Any], *, as_json: bool) -> None:
    """A result dict as JSON (``--json``) or as aligned ``key  value`` lines: one format for every command."""
    if as_json:
        print_json(result)
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())
