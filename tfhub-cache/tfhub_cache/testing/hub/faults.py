"""Faults a test injects into the hub's responses, and the per-response plan derived from them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass
class Faults:
    """Faults injected into responses for one model path (or ``"*"`` for every path).

    Unless stated otherwise, faults act on *archive* responses only (the final storage hop and
    ``/archives/...``), because that is where real-world downloads break; the redirect hops stay healthy.

    ``fail_times``/``fail_status``: the first N archive requests answer ``fail_status`` with a small text
    body (``fail_times < 0`` means every request). ``fail_on="compressed"`` makes the *first* hop
    (``?tf-hub-format=compressed``) fail instead, ``"any"`` both. ``retry_after`` adds a Retry-After header.

    ``cut_after_bytes``/``cut_times``: send the headers with the full Content-Length, then close the
    connection after that many body bytes, for ``cut_times`` requests (``None``: every request).

    ``no_range``: ignore ``Range``/``If-Range``, never advertise ``Accept-Ranges`` (servers like that exist).
    ``range_ignored``: advertise ``Accept-Ranges: bytes`` but answer every ``Range`` with 200 and the whole
    body (misconfigured proxies do).

    ``html_instead``: the archive URL answers 200 ``text/html`` (captive portals, login walls).

    ``delay_s``: sleep before the archive response; ``rate_bytes_per_s``: throttle the body;
    ``stall_after_bytes``/``stall_s``: pause once mid-body (read-timeout tests).

    ``truncate_to``: serve only the first N bytes of the file, with a matching Content-Length, i.e. a
    truncated archive that looks complete at the HTTP level (only the tar/gzip layer can notice).
    """

    fail_times: int = 0
    fail_status: int = 500
    fail_on: str = "archive"
    retry_after: float | None = None
    cut_after_bytes: int | None = None
    cut_times: int | None = None
    no_range: bool = False
    html_instead: bool = False
    delay_s: float = 0.0
    rate_bytes_per_s: float | None = None
    truncate_to: int | None = None
    stall_after_bytes: int | None = None
    stall_s: float = 0.0
    range_ignored: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Faults:
        """Build from keyword arguments or JSON, rejecting unknown names so typos don't pass silently."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; known: {sorted(names)}")
        faults = cls(**dict(values))
        if faults.fail_on not in ("archive", "compressed", "any"):
            raise ValueError(f"fail_on must be 'archive', 'compressed' or 'any', not {faults.fail_on!r}")
        return faults


@dataclasses.dataclass
class FaultState:
    """Faults plus the counters that make ``fail_times``/``cut_times`` apply to the first N requests."""

    faults: Faults
    fail_left: int
    cut_left: int | None


@dataclasses.dataclass
class ResponsePlan:
    """What one archive response must do, decided atomically under the server lock."""

    fail: bool = False
    html: bool = False
    cut_after: int | None = None
    no_range: bool = False
    range_ignored: bool = False
    delay_s: float = 0.0
    rate: float | None = None
    truncate_to: int | None = None
    stall_after: int | None = None
    stall_s: float = 0.0
    fail_status: int = 500
    retry_after: float | None = None
