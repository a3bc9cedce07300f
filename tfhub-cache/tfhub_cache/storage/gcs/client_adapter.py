"""The one place that knows google-cloud-storage's shape beyond its public API: private internals and errors.

The ``gs://`` backend needs a few things the client does not offer publicly: its authorised
``requests`` session (``Client._http``) to stream an upload as one request of a resumable session
and to send a part as one media request, the upload host (``Client._connection`` through
``google.cloud.storage.blob._get_host_name``, which honours ``STORAGE_EMULATOR_HOST`` and custom
endpoints), and the client's credentials (``Client._credentials``) to name the principal in
permission errors. They are reached only through the functions below, so a change of the client
breaks here and nowhere else.

Tested with google-cloud-storage 3.17 (pyproject holds it below 4). When raising that bound, check
each function here against the new client: ``tests/library/test_gcs_cache.py`` exercises them against the
emulator, and ``tests/test_rules.py`` fails if another module reaches for a private internal.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from tfhub_cache.errors import TFHubError

# -- private internals -----------------------------------------------------------------------------------


def http_session(client: Any) -> Any:
    """The client's authorised ``requests`` session (google-cloud-core creates it lazily on first access)."""
    return client._http


def client_credentials(client: Any) -> Any:
    """The credentials a built client uses (None when unknown), for naming the caller in errors."""
    return getattr(client, "_credentials", None)


def media_upload_url(client: Any, bucket: Any, name: str) -> str:
    """The URL of a single-request media upload of object ``name`` into ``bucket`` (``uploadType=media``)."""
    from google.cloud.storage.blob import _get_host_name

    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    return f"{_get_host_name(client._connection)}/upload/storage/v1{bucket.path}/o?{query}"


# -- errors of the client and its transport ----------------------------------------------------------------


def status_of(exc: BaseException) -> int | None:
    """HTTP status of a google-cloud-storage error (api_core exceptions and raw media-layer responses)."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def is_gcs_error(exc: BaseException) -> bool:
    """True for failures of the GCS client or its transport (translated); False for our own or a bug's."""
    if isinstance(exc, TFHubError):
        return False
    module = type(exc).__module__
    return module.startswith(("google.", "requests", "urllib3")) or isinstance(exc, ConnectionError | TimeoutError)


def is_timeout(exc: BaseException) -> bool:
    """A request that got no progress within its timeout (requests, urllib3, api_core, socket)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError) or "Timeout" in type(seen).__name__:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_status(exc: BaseException, *statuses: int) -> bool:
    """True when ``exc`` is a GCS failure with one of ``statuses``."""
    return is_gcs_error(exc) and status_of(exc) in statuses


__all__ = [
    "client_credentials",
    "http_session",
    "is_gcs_error",
    "is_status",
    "is_timeout",
    "media_upload_url",
    "status_of",
]
