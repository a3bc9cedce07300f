"""How often, and after how long, a failed request is tried again: one policy for downloads and uploads.

A base module (no transport of its own), so the HTTP fetchers and the ``gs://`` uploads share one
backoff rule instead of each writing their own.
"""

from __future__ import annotations

import datetime
import email.utils
import random
from dataclasses import dataclass

from tfhub_cache import settings


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter.

    ``attempts`` counts tries of one operation (``TFHUB_DOWNLOAD_RETRIES`` sets it): a request
    that keeps failing is tried that many times, then surfaces as :class:`RetriesExhausted`,
    which nothing above retries again (so attempts never multiply across layers). The n-th
    retry waits a uniform random time in ``[0, min(max_backoff, backoff * 2**n)]`` ("full
    jitter": many workers hitting one hub do not retry in lockstep), or what ``Retry-After`` says.
    """

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 20.0
    #: Longest ``Retry-After`` we obey; a server asking for more gets this (and, if still busy, a 429 again).
    max_retry_after: float = 120.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The default policy with ``TFHUB_DOWNLOAD_RETRIES`` attempts (default 5)."""
        return cls(attempts=settings.download_retries())

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1`` (``Retry-After`` wins when given)."""
        wait = retry_after_seconds(retry_after)
        if wait is not None:
            return min(wait, self.max_retry_after)
        return random.uniform(0, min(self.max_backoff, self.backoff * (2**attempt)))


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds (fractions tolerated) or an HTTP date; None if absent or bad."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


__all__ = ["RetryPolicy", "retry_after_seconds"]
