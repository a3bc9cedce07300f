"""Everything the ``gs://`` backend knows about google-cloud-storage's errors and transport."""

from __future__ import annotations

from airflow_provider_tfhub.core.errors import TFHubError

_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


def _status(exc: BaseException) -> int | None:
    """HTTP status of a google-cloud-storage error (api_core exceptions and raw media-layer responses)."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _is_gcs_error(exc: BaseException) -> bool:
    """True for failures of the GCS client or its transport (translated); False for our own or a bug's."""
    if isinstance(exc, TFHubError):
        return False
    module = type(exc).__module__
    return module.startswith(("google.", "requests", "urllib3")) or isinstance(exc, ConnectionError | TimeoutError)


def _is_timeout(exc: BaseException) -> bool:
    """A request that got no progress within its timeout (requests, urllib3, api_core, socket)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError) or "Timeout" in type(seen).__name__:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_status(exc: BaseException, *statuses: int) -> bool:
    return _is_gcs_error(exc) and _status(exc) in statuses
