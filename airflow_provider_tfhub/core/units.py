"""Sizes, rates and durations as a person reads them in a task log: ``512 B``, ``4.2 KB``, ``1.35 GB``.

Decimal units (1 KB = 1000 B), the same as the ``MB/s`` of transfer rates and as ``gsutil du -h``
prints, so that a size and a rate in one line can be compared by eye. Three significant digits are
enough to recognise a model and to see that a download moves; more are noise.
"""

from __future__ import annotations

_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def human_bytes(n: float) -> str:
    """``0 B``, ``999 B``, ``1.0 KB``, ``12.3 MB``, ``512 MB``, ``1.35 GB`` (negative sizes keep their sign)."""
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    if value < 1000:
        return f"{sign}{value:.0f} B"
    unit = 0
    while value >= 999.5 and unit < len(_UNITS) - 1:
        value /= 1000.0
        unit += 1
    if value >= 99.95:
        text = f"{value:.0f}"
    elif value >= 9.995:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}" if unit >= 3 else f"{value:.1f}"
    return f"{sign}{text} {_UNITS[unit]}"


def human_rate(bytes_per_second: float) -> str:
    """``8.5 MB/s``, ``120 KB/s``."""
    return f"{human_bytes(bytes_per_second)}/s"


def human_duration(seconds: float) -> str:
    """``0.4s``, ``12s``, ``3m 05s``, ``2h 01m``: precise where it matters, short where it does not."""
    if seconds < 0:
        seconds = 0.0
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
