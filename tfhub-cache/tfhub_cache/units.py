"""Sizes, rates, durations and ages: as a person reads them, and as a person writes them.

Task logs (:func:`format_bytes_si`, :func:`format_rate_si`, :func:`human_duration`) use SI units
(1 KB = 1000 B), the same as the ``MB/s`` of transfer rates and as ``gsutil du -h`` prints, so that
a size and a rate in one line can be compared by eye. Three significant digits are enough to
recognise a model and to see that a download moves; more are noise.

Cleanup settings (:func:`parse_size`, :func:`parse_age`) accept both ``G`` (1024-based, what
``du -h`` shows) and ``GB`` (1000-based); ``tfhub-cache`` tables print :func:`format_bytes_iec`
(1024-based) and :func:`format_age`, their inverses. Each size formatter's name says its base.
"""

from __future__ import annotations

import datetime
import re

from tfhub_cache.errors import ConfigurationError

_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def format_bytes_si(n: float) -> str:
    """SI (1000-based): ``0 B``, ``999 B``, ``1.0 KB``, ``12.3 MB``, ``1.35 GB`` (negative sizes keep their sign)."""
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


def format_rate_si(bytes_per_second: float) -> str:
    """SI (1000-based): ``8.5 MB/s``, ``120 KB/s``."""
    return f"{format_bytes_si(bytes_per_second)}/s"


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


# -- sizes and ages given by people (cleanup settings) ----------------------------------------------

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NUMBER_UNIT_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object) -> int:
    """Bytes from ``10G``, ``512M``, ``1.5GB``, ``2048`` (or an int).

    ``K/M/G/T`` and ``KiB/MiB/GiB/TiB`` are powers of 1024 (what ``du -h`` shows); ``KB/MB/GB/TB``
    are powers of 1000 (what disk vendors and GCS billing use). Case does not matter.
    """
    if isinstance(value, bool):
        raise ConfigurationError(f"Size {value!r} is not a size; use bytes or a suffix like 512M, 10G, 1.5GB.")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        match = _NUMBER_UNIT_RE.match(str(value))
        if not match or match.group(2).lower() not in _SIZE_UNITS:
            raise ConfigurationError(
                f"Size {value!r} is not understood; use bytes or a number with K, M, G, T (1024-based) "
                "or KB, MB, GB, TB (1000-based), e.g. 512M, 10G, 1.5GB."
            )
        number, unit = float(match.group(1)), match.group(2).lower()
    if number < 0:
        raise ConfigurationError(f"Size {value!r} must not be negative.")
    return int(number * _SIZE_UNITS[unit])


def parse_age(value: object) -> float:
    """Seconds from ``7d``, ``12h``, ``30m``, ``90s``, ``2w``, ``3600`` (or a number or a timedelta)."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ConfigurationError(f"Age {value!r} is not an age; use seconds or 90s, 30m, 12h, 7d, 2w.")
    elif isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _NUMBER_UNIT_RE.match(str(value))
        if not match or match.group(2).lower() not in _AGE_UNITS:
            raise ConfigurationError(
                f"Age {value!r} is not understood; use seconds or a number with s, m, h, d or w, e.g. 90s, "
                "30m, 12h, 7d."
            )
        seconds = float(match.group(1)) * _AGE_UNITS[match.group(2).lower()]
    if seconds < 0:
        raise ConfigurationError(f"Age {value!r} must not be negative.")
    return seconds


def format_bytes_iec(n: int | None) -> str:
    """IEC (1024-based, ``du -h`` style): ``1.5G`` is 1.5 GiB; the inverse of :func:`parse_size` for display."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if size < 1024 or unit == "T":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{n}B"  # pragma: no cover - loop always returns


def format_age(seconds: float) -> str:
    """``90s``, ``30.0m``, ``12.0h``, ``7.0d``: an age or a grace period in a cleanup report."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
