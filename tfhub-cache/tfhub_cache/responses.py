"""What an answer from a hub or an object store means: worth a retry or not, a model archive or a web page.

One home for these rules, because they were written in each transport (downloads, update checks,
the ``gs://`` backend) and had started to drift. Plain functions of a status and a header, so the
sync, async and GCS paths all share them without sharing a transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tfhub_cache.errors import DownloadError

if TYPE_CHECKING:
    import requests

#: Statuses a later attempt may get past: timeouts, rate limits, overload and server errors.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

#: Content types of a web page: a login or landing page answered where an archive was expected.
HTML_CONTENT_TYPES = ("text/html", "application/xhtml+xml")

#: What to do when a URL gives something other than an archive (shared by the header and body checks).
ARCHIVE_ADVICE = (
    "use the model's handle or a direct .tar.gz URL, and set a token in the tfhub connection if the hub needs one"
)


#: What to do about a hub's error status, for error messages of downloads and update checks alike.
#: How a description names the mirror that answered for a handle (``<handle> through mirror <url>``).
THROUGH_MIRROR = " through mirror "
#: A 404 from a mirror is first a question about the mirror prefix, then about the handle.
MIRROR_404_HINT = (
    "no model at that mirror URL: check the mirror prefix (the mirrors setting), then publisher, name and version"
)
STATUS_HINTS = {
    401: "the hub needs credentials: set the token (password) of the tfhub connection",
    403: "access was denied: check the token and that the model is public",
    404: "no model at that handle: check publisher, name and version",
    410: "the model was removed from the hub",
}


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


def check_archive_response(resp: requests.Response, description: str) -> None:
    """Raise a clear, permanent-or-not DownloadError for anything but a 200 archive body."""
    status = resp.status_code
    if status == 200:
        html = html_page_error(description, resp.headers.get("Content-Type"), status)
        if html is not None:
            resp.close()
            raise html
        return
    resp.close()
    raise status_error(
        status, description, reason=resp.reason, retry_after=resp.headers.get("Retry-After"), doing="serve the archive"
    )


def status_error(
    status: int, description: str, *, reason: str | None = None, retry_after: str | None = None, doing: str
) -> DownloadError:
    """The error for a hub (or mirror) answering ``status``: what it means and what to check.

    ``description`` names what was asked (``<handle> through mirror <url>`` when a mirror answered,
    so a 404 points at the mirror prefix first); ``doing`` completes "the server could not ..." for
    statuses without a specific hint; ``retry_after`` travels with the error for callers that poll.
    """
    hint = STATUS_HINTS.get(status, f"the server could not {doing}")
    if status == 404 and THROUGH_MIRROR in description:
        hint = MIRROR_404_HINT
    answered = f"HTTP {status} ({reason})" if reason else f"HTTP {status}"
    return DownloadError(
        f"{description!r} answered {answered}: {hint}.",
        permanent=is_permanent(status),
        status=status,
        retry_after=retry_after,
    )


__all__ = [
    "ARCHIVE_ADVICE",
    "HTML_CONTENT_TYPES",
    "MIRROR_404_HINT",
    "STATUS_HINTS",
    "THROUGH_MIRROR",
    "TRANSIENT_STATUSES",
    "check_archive_response",
    "content_type",
    "html_page_error",
    "is_permanent",
    "is_transient",
    "status_error",
]
