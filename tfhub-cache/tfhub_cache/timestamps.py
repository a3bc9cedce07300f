"""Times as the cache records them: ISO 8601 in UTC, to the second (``2026-01-31T12:00:00+00:00``).

One home for writing and reading them, so that metadata, exports, update checks and the inventory
agree on the form (and a change of it is made once).
"""

from __future__ import annotations

import datetime
import time


def iso_utc(timestamp: float) -> str:
    """``timestamp`` (seconds since the epoch) as ISO 8601 UTC, to the second."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(timespec="seconds")


def utc_now() -> str:
    """Now, as :func:`iso_utc` writes it."""
    return iso_utc(time.time())


def parse_iso(value: object) -> float | None:
    """Seconds since the epoch of an ISO 8601 time; None for anything else (absent, empty, malformed)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


__all__ = ["iso_utc", "parse_iso", "utc_now"]
