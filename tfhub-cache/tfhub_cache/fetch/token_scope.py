"""The one rule for where a bearer token may go, used by every HTTP path (sync and async).

A token belongs to the URL the user's handle names (or, with a mirror, to the mirror that replaces
it): it is sent only to that URL's own host and port, over that URL's own scheme or over https
(an upgrade never exposes it). Every other hop of a redirect chain -- a storage host, the same
host over plain http, another port -- gets no ``Authorization`` header.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenScope:
    """Where a token may be sent: one ``host[:port]`` over a set of schemes."""

    netloc: str
    schemes: frozenset[str]

    @classmethod
    def for_url(cls, url: str) -> TokenScope:
        """The scope of the URL a handle (or its mirror) names."""
        parts = urllib.parse.urlsplit(url)
        return cls(netloc=parts.netloc.lower(), schemes=frozenset({parts.scheme.lower(), "https"}))

    def allows(self, url: str) -> bool:
        """True when a request to ``url`` may carry the token."""
        parts = urllib.parse.urlsplit(url)
        return bool(self.netloc) and parts.netloc.lower() == self.netloc and parts.scheme.lower() in self.schemes


def auth_headers(scope: TokenScope | None, url: str, token: str | None) -> dict[str, str]:
    """``{"Authorization": "Bearer ..."}`` for a request to ``url`` when the scope allows it, else ``{}``."""
    if token and scope is not None and scope.allows(url):
        return {"Authorization": f"Bearer {token}"}
    return {}
