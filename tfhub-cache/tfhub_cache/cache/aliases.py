"""Aliases: one model known under two handles is downloaded once.

tfhub.dev now answers a model's URL with a redirect to its Kaggle URL, so ``https://tfhub.dev/g/m/1``
and ``https://www.kaggle.com/models/g/m/...`` are the same model; tensorflow_hub would download and
store it twice (its cache key is the sha1 of the handle string). We:

* record, at staging, the chain of model-page URLs the download went through (every hop that still
  asks for ``tf-hub-format``, without its query) in the metadata (``page_urls``), and index each URL
  as a tiny object ``.alias.<sha1(url)>.<sha1(handle)>.json`` at the cache root (one object per URL
  and handle: no read-modify-write, so concurrent stagers never lose each other's records; the
  leading dot keeps it out of tensorflow_hub's and our inventory's way);
* index every Kaggle handle under its other spellings too (the short and the long URL form,
  with and without ``www.``, :func:`~tfhub_cache.handles.kaggle_equivalents`), so that a second
  spelling is recognised without a request;
* on a miss, resolve the first hops of the new handle (redirects only, never an archive byte) and
  look each URL up in the index; a hit is verified against the other entry's own metadata, so a
  stale index object (its entry was pruned or replaced) only costs a download.

The second handle then gets its own complete, tensorflow_hub-compatible entry built from the first
one's files without downloading (:func:`stage_as_alias`, called by the stager on a miss), with
``downloaded: false`` and ``alias_of`` naming the handle that was downloaded.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from tfhub_cache.cache.entries import EntryWriter, complete_meta, entry_result
from tfhub_cache.cache.layout import EntryNames, new_revision_id, tree_of
from tfhub_cache.cache.records import EntryMeta, StagedModel, revision_meta
from tfhub_cache.errors import DownloadError, InvalidHandleError
from tfhub_cache.fetch.transfer import MAX_REDIRECTS, REDIRECT_STATUSES, HttpSource, thread_session
from tfhub_cache.handles import Handle, cache_key, is_archive_name, kaggle_equivalents, parse_handle
from tfhub_cache.storage.base import Storage
from tfhub_cache.timestamps import utc_now

log = logging.getLogger(__name__)

INDEX_PREFIX = ".alias."
#: ``.alias.<sha1(url)>.<sha1(handle)>.json``; the second key is the cache key of the indexed entry.
_INDEX_RE = re.compile(r"^\.alias\.[0-9a-f]{40}\.(?P<key>[0-9a-f]{40})\.json$")
_FORMAT_PARAM = "tf-hub-format"


def page_url(url: str) -> str | None:
    """The model-page URL of a requested hop: a URL asking for ``tf-hub-format``, without its query."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return None
    if not any(k == _FORMAT_PARAM for k, _ in urllib.parse.parse_qsl(parts.query)):
        return None
    pairs = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != _FORMAT_PARAM]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, urllib.parse.urlencode(pairs), ""))


def page_urls(handle: str, requested: Iterable[str]) -> list[str]:
    """The handle, its other Kaggle spellings and every model-page URL of the redirect chain, without duplicates."""
    urls = [handle, *kaggle_equivalents(handle)]
    for url in requested:
        page = page_url(url)
        if page and page not in urls:
            urls.append(page)
    return urls


def index_name(url: str, handle: str) -> str:
    return f"{INDEX_PREFIX}{cache_key(url)}.{cache_key(handle)}.json"


def index_by_entry(storage: Storage) -> dict[str, list[str]]:
    """Every alias index object, grouped by the cache key of the entry it points to.

    ``prune`` removes an entry's index objects with the entry, and those of entries that are gone.
    """
    found: dict[str, list[str]] = {}
    for name in storage.list_root(prefix=INDEX_PREFIX):
        match = _INDEX_RE.match(name)
        if match:
            found.setdefault(match.group("key"), []).append(name)
    return found


def has_index(storage: Storage) -> bool:
    """True when any alias URL is indexed (else a miss needs no redirect resolution at all)."""
    return any(name.endswith(".json") for name in storage.list_root(prefix=INDEX_PREFIX))


def record(storage: Storage, handle: str, urls: Iterable[str]) -> None:
    """Index ``handle`` under each of its page URLs (best effort: a failure only costs a later download)."""
    for url in urls or ():
        try:
            storage.write_bytes(index_name(url, handle), json.dumps({"url": url, "handle": handle}).encode())
        except Exception as exc:
            log.debug("Could not index %s as an alias URL of %s: %s", url, handle, exc)


def candidates(storage: Storage, url: str) -> list[str]:
    """Handles indexed under ``url`` (unverified)."""
    handles = []
    for name in storage.list_root(prefix=f"{INDEX_PREFIX}{cache_key(url)}."):
        if not name.endswith(".json"):
            continue  # a cut-short atomic write
        data = storage.read_bytes(name)
        try:
            item = json.loads(data) if data else None
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("url") == url and isinstance(item.get("handle"), str):
            handles.append(item["handle"])
    return handles


def lookup(
    storage: Storage, urls: Iterable[str], *, exclude: str, read: Callable[[str], dict[str, Any] | None]
) -> dict[str, Any] | None:
    """The complete entry (``read(handle)``) of another handle whose recorded page URLs include one of ``urls``."""
    for url in urls:
        for other in candidates(storage, url):
            if other == exclude:
                continue
            entry = read(other)
            if entry is not None and url in (entry.get("page_urls") or ()):
                return entry
    return None


def resolve_first_hops(source: HttpSource, known: Callable[[str], bool]) -> list[str]:
    """Follow the model-page redirects of ``source.url`` without fetching the archive.

    Returns the page URLs seen, stopping at the first ``known`` one or at the first hop that no
    longer asks for ``tf-hub-format`` (the archive's storage URL, which is never requested).
    """
    url = source.url
    seen: list[str] = []
    for _ in range(MAX_REDIRECTS + 1):
        page = page_url(url)
        if page is None:
            break
        seen.append(page)
        if known(page):
            break
        resp = source.request(url, redirects=False, stream=True)
        try:
            location = resp.headers.get("Location")
            if resp.status_code not in REDIRECT_STATUSES or not location:
                break  # the archive itself (its body is never read) or an error the download will report
        finally:
            resp.close()
        url = urllib.parse.urljoin(url, location)
    return seen


def stage_as_alias(
    writer: EntryWriter,
    handle: Handle,
    source: Callable[[], HttpSource],
    *,
    sha256: str | None,
    tmp: str,
) -> StagedModel | None:
    """On a miss: if ``handle`` redirects to a model another entry was downloaded through, publish a
    revision of this entry built from that entry's current revision (hard links locally, server-side
    copies on gs://), with no archive download. None when there is no such entry.

    ``source`` builds the handle's HTTP source (only called when the index has entries); ``tmp`` is
    the stager's own temp name.
    """
    if handle.kind != "http" or is_archive_name(urllib.parse.urlsplit(handle.text).path):
        return None  # a direct archive URL is no model page (and its first hop would be the archive)
    storage, names = writer.storage, writer.names
    if not has_index(storage):
        return None  # nothing indexed yet: no request spent on resolving redirects

    def read(other: str) -> dict[str, Any] | None:
        return _other_entry(storage, other)

    def known(url: str) -> bool:
        return lookup(storage, [url], exclude=handle.text, read=read) is not None

    described = handle.text
    hops = kaggle_equivalents(handle.text)  # another spelling of the same Kaggle model: no request
    other = lookup(storage, hops, exclude=handle.text, read=read)
    if other is None:
        http = source()
        described = http.description
        try:
            hops = resolve_first_hops(http, known)
        except DownloadError as exc:
            log.debug("Could not resolve the redirects of %s (%s); downloading it.", handle.text, exc)
            return None
        other = lookup(storage, hops, exclude=handle.text, read=read)
    if other is None or (sha256 is not None and other.get("sha256") != sha256):
        return None
    rev = new_revision_id()
    storage.clone_tree(other["_tree"], names.revision(rev), tmp)
    now = utc_now()
    page_list: list[str] = list(dict.fromkeys([handle.text, *hops, *other["page_urls"]]))
    recorded: EntryMeta = other["_meta"]
    meta = revision_meta(
        recorded,
        handle=handle.text,
        revision=rev,
        alias_of=recorded.get("alias_of") or other["handle"],
        page_urls=page_list,
        mirror=None,
        staged_at=now,
        checked_at=now,
    )
    writer.publish(meta, handle=handle.text, previous_rev=None)
    record(storage, handle.text, page_list)
    # every URL is followed by a space (log viewers would link trailing punctuation with it)
    log.info(
        "%s redirects to %s like %s did: staged revision %s from the files already staged, nothing downloaded",
        described,
        next((u for u in hops if u in other["page_urls"]), other["handle"]),
        meta["alias_of"],
        rev,
    )
    return writer.result(meta, downloaded=False)


def _other_entry(storage: Storage, handle: str) -> dict[str, Any] | None:
    """Another handle's complete entry, with the metadata it recorded (page URLs, revision)."""
    try:
        names = EntryNames(parse_handle(handle).cache_key)
    except InvalidHandleError:
        return None
    meta = complete_meta(storage, names)
    if meta is None or not meta.get("revision"):
        return None  # an entry of an older release is converted when it is staged again, not here
    entry = dict(entry_result(storage, names, meta, downloaded=False))
    return {**entry, "page_urls": meta.get("page_urls") or [], "_meta": meta, "_tree": tree_of(names, meta)}


def recording_session() -> Any:
    """The thread's HTTP session (keep-alive reuse as before), remembering every URL asked for through it.

    That list is the redirect chain of a download, which :func:`page_urls` turns into page URLs.
    """
    return _RecordingSession(thread_session())


class _RecordingSession:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requested: list[str] = []

    def get(self, url: Any, **kwargs: Any) -> Any:
        self.requested.append(str(url))
        return self.inner.get(url, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
