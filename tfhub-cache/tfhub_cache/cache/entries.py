"""One cache entry: read it (is it complete, what does it hold) and make a revision its current one.

Reading needs no lock and never touches the network: an entry is complete only when
``<key>.meta.json`` names a revision whose model marker exists (:func:`~.layout.is_complete`).
Writing (:class:`EntryWriter`) happens under the entry's lock, with a precondition on the metadata
so that a stager that lost its lock cannot overwrite a newer switch.
"""

from __future__ import annotations

import os
from typing import Any

from tfhub_cache import settings
from tfhub_cache.cache.layout import (
    EntryNames,
    decode_meta,
    descriptor_text,
    encode_meta,
    find_marker,
    is_complete,
    new_uid,
    tree_of,
)
from tfhub_cache.cache.records import EntryMeta, RevisionMeta, StagedModel, entry_meta, revision_meta, staged_model
from tfhub_cache.errors import CacheError
from tfhub_cache.handles import parse_handle
from tfhub_cache.storage import Storage, open_storage
from tfhub_cache.timestamps import utc_now

__all__ = ["EntryWriter", "complete_meta", "entry_result", "is_cached", "is_settled", "lookup_entry"]


def lookup_entry(storage: Storage, handle: str) -> StagedModel | None:
    """The staged-model dict of a complete entry, or None. Reads only; never touches the network.

    Complete means: metadata naming a revision whose model marker exists (or, for an entry
    written before revisions existed, metadata plus the marker in the model dir). A directory that
    tensorflow_hub filled is not an entry until a stager adopts it (:mod:`~tfhub_cache.cache.adoption`).
    """
    names = EntryNames(parse_handle(handle).cache_key)
    meta = complete_meta(storage, names)
    return None if meta is None else entry_result(storage, names, meta, downloaded=False)


def is_cached(handle: str, cache_dir: str | None = None, *, storage_options: dict[str, Any] | None = None) -> bool:
    """True when ``handle`` is completely staged in ``cache_dir`` (no network access)."""
    parsed = parse_handle(handle)
    if parsed.kind == "local_dir":
        return os.path.isdir(parsed.text)
    storage = open_storage(settings.resolve_cache_dir(cache_dir), **(storage_options or {}))
    return lookup_entry(storage, parsed.text) is not None


def complete_meta(storage: Storage, names: EntryNames) -> EntryMeta | None:
    """The entry's metadata when the tree it names is complete (:func:`~.layout.is_complete`), else None."""
    meta = decode_meta(storage.read_bytes(names.meta))
    if meta is None:
        return None
    marker = find_marker(storage, tree_of(names, meta), meta)
    return meta if is_complete(meta, marker, locked=False) else None


def is_settled(meta: EntryMeta) -> bool:
    """A hit needs no work: it names a revision, and the tensorflow_hub view shows that revision."""
    return bool(meta.get("revision")) and meta.get("view") == meta.get("revision")


def entry_result(
    storage: Storage, names: EntryNames, meta: RevisionMeta, *, downloaded: bool, refreshed: bool = False
) -> StagedModel:
    """The staged-model dict of an entry whose metadata is ``meta``."""
    return staged_model(
        handle=meta.get("handle"),
        path=storage.location(tree_of(names, meta)),
        meta=meta,
        cache_dir=storage.location(),
        cache_key=names.key,
        downloaded=downloaded,
        refreshed=refreshed,
    )


class EntryWriter:
    """Writes one entry's metadata under its lock, and switches which revision is current.

    :meth:`remember_generation` records the metadata's generation once the lock is held; every
    later write carries it as a precondition, so a stager whose lock was taken over fails instead
    of overwriting a newer switch.
    """

    def __init__(self, storage: Storage, names: EntryNames) -> None:
        self.storage = storage
        self.names = names
        self._token: str | None = None

    def remember_generation(self) -> None:
        stat = self.storage.stat(self.names.meta)
        self._token = stat.token if stat is not None else None

    def meta(self) -> EntryMeta:
        """The entry's metadata as recorded now (empty when there is none)."""
        return decode_meta(self.storage.read_bytes(self.names.meta)) or EntryMeta()

    def result(self, meta: RevisionMeta, *, downloaded: bool, refreshed: bool = False) -> StagedModel:
        return entry_result(self.storage, self.names, meta, downloaded=downloaded, refreshed=refreshed)

    def write(self, meta: EntryMeta) -> None:
        """Rewrite ``<key>.meta.json``, if nobody else did since we took the lock."""
        token = self.storage.write_bytes_if(self.names.meta, encode_meta(meta), token=self._token)
        if token is None:
            raise CacheError(
                f"{self.storage.location(self.names.meta)} was changed by another stager while we held its lock "
                "(the lock was taken over: is lock_timeout too short for this model?); retry the task."
            )
        self._token = token

    def publish(self, meta: RevisionMeta, *, handle: str, previous_rev: str | None) -> None:
        """Record a complete revision tree and make it current: its metadata, the descriptor, the switch."""
        rev = str(meta["revision"])
        self.storage.write_bytes(self.names.revision_meta(rev), encode_meta(meta))
        self.storage.write_bytes(self.names.descriptor, descriptor_text(handle).encode("utf8"))
        self.switch(meta, previous_rev=previous_rev)

    def switch(self, meta: RevisionMeta, *, previous_rev: str | None) -> None:
        """Make ``meta``'s revision current: metadata first (our readers), then the tensorflow_hub view.

        The old revision is stamped ``superseded_at``, which starts its grace period.
        """
        rev = str(meta["revision"])
        entry = entry_meta(meta, view=previous_rev if previous_rev != rev else rev)
        self.write(entry)
        self.storage.publish_view(self.names.model, self.names.revision(rev), self.names.tmp(new_uid()))
        self.write(entry_meta(entry, view=rev))
        if previous_rev and previous_rev != rev:
            old = decode_meta(self.storage.read_bytes(self.names.revision_meta(previous_rev)))
            if old is not None and not old.get("superseded_at"):
                superseded = revision_meta(old, superseded_at=utc_now())
                self.storage.write_bytes(self.names.revision_meta(previous_rev), encode_meta(superseded))
