"""Entries we did not write: a model dir that tensorflow_hub filled, and entries of older releases.

Both become a revision of ours, under the entry's lock, without downloading: the model dir is
cloned into ``<key>.revisions/<rev>/`` (hard links locally, server-side copies on ``gs://``), that
revision's metadata is written, and the revision is switched to as current. tensorflow_hub keeps
finding the model at ``<key>`` throughout.
"""

from __future__ import annotations

import logging

from tfhub_cache.cache.entries import EntryWriter
from tfhub_cache.cache.layout import REVISION_RE, decode_meta, encode_meta, find_marker, new_revision_id
from tfhub_cache.cache.records import EntryMeta, RevisionMeta, StagedModel, revision_meta
from tfhub_cache.storage.base import Storage
from tfhub_cache.timestamps import iso_utc

log = logging.getLogger(__name__)

__all__ = ["adopt_tfhub_dir", "convert_legacy", "tfhub_marker"]


def tfhub_marker(writer: EntryWriter) -> str | None:
    """The model marker in the tensorflow_hub view ``<key>`` (ours or tensorflow_hub's), if any."""
    return find_marker(writer.storage, writer.names.model, None)


def adopt_tfhub_dir(writer: EntryWriter, *, handle: str, tmp: str) -> StagedModel | None:
    """A model dir that tensorflow_hub filled (marker, no metadata) becomes a revision, no bytes fetched.

    ``tmp`` is the stager's own temp name (the clone is built there). None when there is no such dir.
    """
    storage, names = writer.storage, writer.names
    marker = tfhub_marker(writer)
    if marker is None:
        return None
    target = storage.view_target(names.model)
    rev = target.rpartition("/")[2] if target else ""
    if target == names.revision(rev) and REVISION_RE.match(rev):
        # Our own view whose entry metadata was lost (e.g. removed by hand): the revision is intact.
        recorded = decode_meta(storage.read_bytes(names.revision_meta(rev)))
        if recorded is not None:
            writer.switch(recorded, previous_rev=rev)
            return writer.result(recorded, downloaded=False)
    meta = revision_meta(
        handle=handle,
        source_url=None,
        sha256=None,
        archive_bytes=None,
        etag=None,
        last_modified=None,
        marker=marker,
        staged_at=_mtime_iso(storage, names.model, marker),
        checked_at=None,
        adopted_from="tensorflow_hub",
        manifest={},
    )
    return _convert(writer, meta, tmp, "Adopted tensorflow_hub's")


def convert_legacy(writer: EntryWriter, meta: EntryMeta, *, tmp: str) -> StagedModel:
    """An entry of a release before revisions (plain model dir, metadata without ``revision``)."""
    return _convert(writer, meta, tmp, "Converted")


def _convert(writer: EntryWriter, recorded: RevisionMeta, tmp: str, verb: str) -> StagedModel:
    storage, names = writer.storage, writer.names
    rev = new_revision_id()
    target = names.revision(rev)
    storage.clone_tree(names.model, target, tmp)
    listing = list(storage.list_tree(target))
    meta = revision_meta(recorded, revision=rev, files=len(listing), bytes=sum(size for _, size in listing))
    storage.write_bytes(names.revision_meta(rev), encode_meta(meta))
    writer.switch(meta, previous_rev=None)
    log.info("%s %s into revision %s.", verb, storage.location(names.model), rev)
    return writer.result(meta, downloaded=False)


def _mtime_iso(storage: Storage, model: str, marker: str) -> str | None:
    stat = storage.stat(f"{model}/{marker}")
    return iso_utc(stat.mtime) if stat is not None else None
