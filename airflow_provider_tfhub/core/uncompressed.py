"""UNCOMPRESSED mode: ask the hub where the unpacked model lives (a ``gs://`` location) instead of
downloading it, exactly as tensorflow_hub 0.16 does: ``?tf-hub-format=uncompressed`` must answer
``303 See Other`` whose *body* is the location.
"""

from __future__ import annotations

from airflow_provider_tfhub.core.errors import DownloadError
from airflow_provider_tfhub.core.handles import UNCOMPRESSED_FORMAT_QUERY, parse_handle, with_format_query
from airflow_provider_tfhub.core.transfer import HttpSource, RetryPolicy


def resolve_uncompressed(handle: str, *, token: str | None = None, retry: RetryPolicy | None = None) -> str:
    """Return the ``gs://`` location the hub names for ``handle``; a clear error for anything else."""
    parsed = parse_handle(handle)
    url = with_format_query(parsed.handle, UNCOMPRESSED_FORMAT_QUERY)
    source = HttpSource(url, token=token, token_host=parsed.host, retry=retry, description=parsed.handle)
    resp = source.request(url, redirects=False, stream=False)
    try:
        if resp.status_code != 303:
            raise DownloadError(
                f"{parsed.handle!r} in UNCOMPRESSED mode: expected HTTP 303 See Other with a gs:// location but "
                f"received HTTP {resp.status_code} ({resp.reason}); this hub or URL does not serve uncompressed "
                "models: use load_format='COMPRESSED'.",
                permanent=True,
                status=resp.status_code,
            )
        location = resp.text.strip()
    finally:
        resp.close()
    if not location.startswith("gs://"):
        raise DownloadError(
            f"{parsed.handle!r} in UNCOMPRESSED mode: expected the server to return a gs:// location but received "
            f"{location[:80]!r}; use load_format='COMPRESSED'.",
            permanent=True,
            status=303,
        )
    return location
