"""Mirrors: fetch a model from an internal proxy while keeping the handle the user wrote.

Companies that reach tfhub.dev and Kaggle only through an artifact proxy map URL prefixes to
mirror prefixes, e.g. ``{"https://tfhub.dev": "https://mirror.corp/tfhub"}``. Only the URL that
is *fetched* is rewritten (longest matching prefix wins); the cache key, descriptor, ``handle``
and metadata stay those of the handle as written, so ``hub.load("https://tfhub.dev/...")`` finds
the staged model with no network. A token then goes to the mirror's host: it replaces the
handle's host in the token rule (:mod:`tfhub_cache.fetch.token_scope`).

The mapping comes from the first that is set: argument > connection extra ``mirrors`` >
``TFHUB_MIRRORS`` (a JSON object) > ``[tfhub] mirrors``. No merging: the first set mapping is the
whole mapping, so a task can always see exactly which one applies.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping

from tfhub_cache import settings
from tfhub_cache.errors import ConfigurationError
from tfhub_cache.responses import THROUGH_MIRROR

MIRRORS_ENV = "TFHUB_MIRRORS"
_EXAMPLE = '{"https://tfhub.dev": "https://mirror.corp/tfhub"}'


def parse_mirrors(value: str | Mapping[str, str] | None, *, setting: str) -> dict[str, str]:
    """Validate a mapping (or its JSON text) of URL prefix -> mirror prefix; ``setting`` names its origin.

    Both sides must be ``http(s)://host[/path]`` without query or fragment; a trailing slash is
    dropped so that ``https://tfhub.dev`` and ``https://tfhub.dev/`` mean the same prefix.
    """
    if value is None:
        return {}
    data: object = value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(
                f"{setting} is not valid JSON ({exc}); give a JSON object of URL prefix -> mirror prefix, "
                f"e.g. {_EXAMPLE}."
            ) from exc
    if not isinstance(data, Mapping):
        raise ConfigurationError(
            f"{setting} must be a JSON object of URL prefix -> mirror prefix, e.g. {_EXAMPLE}; "
            f"got {type(data).__name__}."
        )
    mapping: dict[str, str] = {}
    for prefix, mirror in data.items():
        if not isinstance(prefix, str) or not isinstance(mirror, str):
            raise ConfigurationError(
                f"{setting}: prefix {prefix!r} -> {mirror!r} must map a string to a string, e.g. {_EXAMPLE}."
            )
        mapping[_check_url(prefix, setting, "prefix")] = _check_url(mirror, setting, "mirror")
    return mapping


def _check_url(url: str, setting: str, role: str) -> str:
    text = url.strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(
            f"{setting}: {role} {url!r} is not an http(s)://host[/path] URL prefix without query; "
            f"fix the mapping, e.g. {_EXAMPLE}."
        )
    return text.rstrip("/")


def resolve_mirrors(
    explicit: str | Mapping[str, str] | None = None,
    connection: str | Mapping[str, str] | None = None,
    config: str | Mapping[str, str] | None = None,
    *,
    origins: settings.Origins = settings.AIRFLOW,
) -> dict[str, str]:
    """argument > connection extra ``mirrors`` > ``TFHUB_MIRRORS`` > ``[tfhub] mirrors`` > no mirrors."""
    candidates = (
        (explicit, origins.argument("mirrors")),
        (connection, origins.connection("mirrors")),
        (settings.env_text(MIRRORS_ENV), settings.environment(MIRRORS_ENV)),
        (config, origins.config("mirrors")),
    )
    for value, origin in candidates:
        mapping = parse_mirrors(value, setting=origin[0].upper() + origin[1:])
        if mapping:
            return mapping
    return {}


def mirror_url(url: str, mirrors: Mapping[str, str] | None) -> str | None:
    """The mirror URL of ``url`` (longest matching prefix wins), or None when no prefix matches.

    A prefix matches at a path boundary only: ``https://tfhub.dev`` matches ``https://tfhub.dev/a``
    but not ``https://tfhub.dev.example.com/a``. Scheme and host compare case-insensitively.
    """
    if not mirrors:
        return None
    best: tuple[int, str] | None = None
    for raw_prefix, mirror in mirrors.items():
        prefix = raw_prefix.rstrip("/")
        rest = _rest_after(url, prefix)
        if rest is not None and (best is None or len(prefix) > best[0]):
            best = (len(prefix), mirror.rstrip("/") + rest)
    return best[1] if best else None


#: How a fetch through a mirror is described in log lines and errors: ``<handle> through mirror <url>``.


def describe(url: str, mirrors: Mapping[str, str] | None) -> str:
    """``url`` as logs and errors name it: with its mirror URL when a mirror answers for it.

    Whatever a mirror answers (a 404 from a wrong prefix, the bytes of a refresh) is then seen to come
    from the mirror, not from the handle's own host. Each URL is followed by a space or ends the text.
    """
    mirrored = mirror_url(url, mirrors)
    return f"{url}{THROUGH_MIRROR}{mirrored}" if mirrored else url


def rewrite(url: str, mirrors: Mapping[str, str] | None) -> str:
    """``url`` as it is fetched: its mirror URL, or itself when no mirror applies."""
    return mirror_url(url, mirrors) or url


def _rest_after(url: str, prefix: str) -> str | None:
    """What follows ``prefix`` in ``url`` (None when it does not start with it at a path boundary)."""
    parts = urllib.parse.urlsplit(prefix)
    origin = len(parts.scheme) + len("://") + len(parts.netloc)  # compared case-insensitively
    head, rest = url[: len(prefix)], url[len(prefix) :]
    if len(head) < len(prefix) or head[:origin].lower() != prefix[:origin].lower() or head[origin:] != prefix[origin:]:
        return None
    if rest and rest[0] not in "/?#":
        return None
    return rest
