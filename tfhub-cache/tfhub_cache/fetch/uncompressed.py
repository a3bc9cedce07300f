"""UNCOMPRESSED mode: ask the hub where the unpacked model lives (a ``gs://`` location) instead of
downloading it, exactly as tensorflow_hub 0.16 does: ``?tf-hub-format=uncompressed`` must answer
``303 See Other`` whose *body* is the location.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

from tfhub_cache.errors import DownloadError
from tfhub_cache.fetch import mirrors as mirrors_mod
from tfhub_cache.fetch.transfer import HttpSource, RetryPolicy
from tfhub_cache.handles import UNCOMPRESSED_FORMAT_QUERY, parse_handle, with_format_query


def resolve_uncompressed(
    handle: str,
    *,
    token: str | None = None,
    retry: RetryPolicy | None = None,
    mirrors: Mapping[str, str] | None = None,
) -> str:
    """Return the ``gs://`` location the hub (or its mirror) names for ``handle``; a clear error otherwise."""
    parsed = parse_handle(handle)
    fetch_url = mirrors_mod.rewrite(parsed.text, mirrors)
    url = with_format_query(fetch_url, UNCOMPRESSED_FORMAT_QUERY)
    token_host = urllib.parse.urlsplit(fetch_url).netloc  # with a mirror, the token goes to the mirror
    source = HttpSource(
        url, token=token, token_host=token_host, retry=retry, description=mirrors_mod.describe(parsed.text, mirrors)
    )
    resp = source.request(url, redirects=False, stream=False)
    try:
        if resp.status_code != 303:
            raise DownloadError(
                f"{parsed.text!r} in UNCOMPRESSED mode: expected HTTP 303 See Other with a gs:// location but "
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
            f"{parsed.text!r} in UNCOMPRESSED mode: expected the server to return a gs:// location but received "
            f"{location[:80]!r}; use load_format='COMPRESSED'.",
            permanent=True,
            status=303,
        )
    return location
