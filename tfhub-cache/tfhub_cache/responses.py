"""What an answer from a hub or an object store means: worth a retry or not, a model archive or a web page.

One home for these rules, because they were written in each transport (downloads, update checks,
the ``gs://`` backend) and had started to drift. Plain functions of a status and a header, so the
sync, async and GCS paths all share them without sharing a transport.
"""

from __future__ import annotations

from tfhub_cache.errors import DownloadError

#: Statuses a later attempt may get past: timeouts, rate limits, overload and server errors.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

#: Content types of a web page: a login or landing page answered where an archive was expected.
HTML_CONTENT_TYPES = ("text/html", "application/xhtml+xml")

#: What to do when a URL gives something other than an archive (shared by the header and body checks).
ARCHIVE_ADVICE = (
    "use the model's handle or a direct .tar.gz URL, and set a token in the tfhub connection if the hub needs one"
)


def is_transient(status: int | None) -> bool:
    """True for a status that a retry may fix."""
    return status in TRANSIENT_STATUSES


def is_permanent(status: int | None) -> bool:
    """True for a status no retry can fix: a 4xx other than the transient ones (None: unknown, so not)."""
    return status is not None and status < 500 and status not in TRANSIENT_STATUSES


def content_type(value: str | None) -> str:
    """The media type of a ``Content-Type`` header, lower case, without parameters."""
    return (value or "").split(";")[0].strip().lower()


def html_page_error(description: str, content_type_header: str | None, status: int) -> DownloadError | None:
    """The error for a web page answered instead of an archive (None when the type is not HTML)."""
    ctype = content_type(content_type_header)
    if ctype not in HTML_CONTENT_TYPES:
        return None
    return DownloadError(
        f"{description!r} returned an HTML page instead of a model archive (Content-Type {ctype}); "
        f"the URL is probably a web page or a login page: {ARCHIVE_ADVICE}.",
        permanent=True,
        status=status,
    )


__all__ = [
    "ARCHIVE_ADVICE",
    "HTML_CONTENT_TYPES",
    "TRANSIENT_STATUSES",
    "content_type",
    "html_page_error",
    "is_permanent",
    "is_transient",
]
