"""The staging flow: handle -> cache hit? -> lock -> fetch + extract -> publish -> metadata.

Written once against :class:`~tfhub_cache.storage.base.Storage`, so local and
``gs://`` caches behave alike. The single correctness rule: an entry is complete for us only when
``<key>.meta.json`` exists, and that file is written last, after the model tree was published.
A cache that tensorflow_hub filled (model dir with ``saved_model.pb``, no lock, no metadata) is a
hit too: the stager adopts it as a revision of ours (:mod:`~tfhub_cache.cache.adoption`).

The pieces live in their own modules: the options (:mod:`~tfhub_cache.cache.options`), reading and
switching an entry (:mod:`~tfhub_cache.cache.entries`), adoption, alias staging
(:mod:`~tfhub_cache.cache.aliases`), revision listings (:mod:`~tfhub_cache.cache.revisions`) and the
sweep of dead stagers' leftovers (:mod:`~tfhub_cache.cache.leftovers`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from tfhub_cache import settings
from tfhub_cache.archive.extract import extract_archive
from tfhub_cache.cache import aliases
from tfhub_cache.cache.adoption import adopt_tfhub_dir, convert_legacy, tfhub_marker
from tfhub_cache.cache.entries import EntryWriter, complete_meta, is_cached, is_settled, lookup_entry
from tfhub_cache.cache.layout import (
    EntryNames,
    decode_meta,
    encode_meta,
    find_marker,
    is_complete,
    new_revision_id,
    new_uid,
)
from tfhub_cache.cache.leftovers import remove_dead_leftovers, remove_unfinished_model
from tfhub_cache.cache.locks import CacheLock
from tfhub_cache.cache.options import StageOptions, check_sha256
from tfhub_cache.cache.records import (
    RESULT_KEYS,
    ManifestRecord,
    RevisionMeta,
    StagedModel,
    entry_meta,
    revision_meta,
    staged_model,
)
from tfhub_cache.cache.revisions import published_revisions
from tfhub_cache.errors import (
    CacheError,
    ChecksumMismatchError,
    ConfigurationError,
    DownloadError,
    InvalidHandleError,
    OfflineError,
)
from tfhub_cache.fetch import mirrors as mirrors_mod
from tfhub_cache.fetch.streams import ArchiveSource, ArchiveStream
from tfhub_cache.fetch.transfer import HttpSource, LocalFileSource, hub_source, with_retries
from tfhub_cache.handles import (
    COMPRESSED_FORMAT_QUERY,
    Handle,
    parse_handle,
)
from tfhub_cache.retry import RetryPolicy
from tfhub_cache.storage import Storage, open_storage
from tfhub_cache.storage.base import MODEL_MARKERS
from tfhub_cache.timestamps import utc_now
from tfhub_cache.units import format_bytes_si, human_duration

log = logging.getLogger(__name__)

__all__ = ["RESULT_KEYS", "StageOptions", "StagedModel", "Stager", "check_sha256", "is_cached", "lookup_entry", "stage"]


def stage(
    handle: str, cache_dir: str | None = None, *, options: StageOptions | None = None, **choices: Any
) -> StagedModel:
    """Stage ``handle`` into ``cache_dir`` and return the staged-model dict (see :data:`RESULT_KEYS`).

    ``cache_dir=None`` means ``TFHUB_CACHE_DIR`` or tensorflow_hub's default. The choices are one
    :class:`~tfhub_cache.cache.options.StageOptions` (``options=``), or its fields as keyword
    arguments (``sha256=``, ``refresh=``, ``offline=``, ``mirrors=``, ``download_connections=`` ...);
    what is not given comes from the environment (``TFHUB_*``) or the defaults.
    """
    if options is not None and choices:
        raise TypeError(f"stage() takes options= or keyword choices, not both (got {', '.join(sorted(choices))}).")
    parsed = parse_handle(handle)
    opts = (options if options is not None else StageOptions(**choices)).resolved()

    if parsed.kind == "local_dir":
        return _local_dir_result(parsed)
    if opts.load_format == "UNCOMPRESSED":
        if parsed.kind != "http":
            raise ConfigurationError(
                f"UNCOMPRESSED load format needs an http(s) handle, not {parsed.text!r}; use COMPRESSED."
            )
        if opts.offline:
            raise OfflineError(f"Offline mode: cannot resolve {parsed.text!r} in UNCOMPRESSED mode.")
        from tfhub_cache.fetch.uncompressed import resolve_uncompressed

        location = resolve_uncompressed(parsed.text, token=opts.token, retry=opts.retry, mirrors=opts.mirror_map)
        return uncompressed_result(parsed, location)

    storage = open_storage(settings.resolve_cache_dir(cache_dir), **opts.storage_options)
    return Stager(storage, parsed, opts).run()


def uncompressed_result(parsed: Handle, location: str) -> StagedModel:
    """The staged-model dict for UNCOMPRESSED mode: the model is read in place, nothing is cached."""
    return staged_model(
        handle=parsed.text,
        path=location,
        load_format="UNCOMPRESSED",
        source_url=location,
        checked_at=utc_now(),
    )


class Stager:
    """One staging of one handle into one storage; :meth:`run` is the whole flow.

    Every model is published as an immutable revision (``<key>.revisions/<rev>/``) and only then
    made current, by rewriting ``<key>.meta.json`` (the one switch our readers follow) and then the
    tensorflow_hub view ``<key>``. A revision is never modified; ``prune`` removes superseded ones
    after their grace period.
    """

    def __init__(self, storage: Storage, handle: Handle, options: StageOptions) -> None:
        """``options`` as :meth:`StageOptions.resolved` returns them (nothing left to look up)."""
        self.storage = storage
        self.handle = handle
        self.names = EntryNames(handle.cache_key)
        self.options = options
        self.entry = EntryWriter(storage, self.names)
        self.uid = new_uid()
        # what the HTTP source is built from
        self.token = options.token
        self.mirrors = options.mirror_map
        self.retry = options.retry or RetryPolicy.from_env()
        self.progress_interval = options.progress_interval
        self.download_connections = options.download_connections
        self._session: Any = None  # records the redirect chain of an HTTP download (aliases)

    # -- the flow ---------------------------------------------------------------------------------
    def run(self) -> StagedModel:
        refresh, offline = self.options.refresh, bool(self.options.offline)
        hit_meta = complete_meta(self.storage, self.names)
        hit = None if hit_meta is None else self.entry.result(hit_meta, downloaded=False)
        if hit_meta is not None and hit is not None and (refresh == "never" or offline) and is_settled(hit_meta):
            self._check_pin(hit)
            self.storage.touch(self.names.meta)
            return hit
        if hit is None and offline and not tfhub_marker(self.entry):
            raise OfflineError(
                f"Offline mode: {self.handle.text!r} is not staged in {self.storage.location()!r}; stage it "
                "while online first, or unset TFHUB_OFFLINE / offline=True."
            )
        try:
            self.storage.ensure_root()
        except CacheError:
            if hit is not None:  # a read-only shared cache written by an older release: still a hit
                return hit
            raise
        lock = CacheLock(
            self.storage,
            self.names.lock,
            self.uid,
            timeout=settings.resolve_lock_timeout(self.options.lock_timeout),
            tmp_name=self.names.tmp,
        )
        waiting_for_hit = hit is None
        if not lock.acquire(done=(lambda: self._entry() is not None) if waiting_for_hit else None):
            result = self._entry()
            assert result is not None
            return result
        try:
            remove_dead_leftovers(
                self.storage, self.names, own_uid=self.uid, current_revision=lambda: self.entry.meta().get("revision")
            )
            self.entry.remember_generation()
            current = self._entry()
            if current is None:
                current = adopt_tfhub_dir(self.entry, handle=self.handle.text, tmp=self.names.tmp(self.uid))
                if current is None:
                    if offline:
                        raise OfflineError(
                            f"Offline mode: {self.handle.text!r} is not staged in {self.storage.location()!r}; "
                            "stage it while online first, or unset TFHUB_OFFLINE / offline=True."
                        )
                    remove_unfinished_model(self.storage, self.names)
                    alias = aliases.stage_as_alias(
                        self.entry,
                        self.handle,
                        self._http_source,
                        sha256=self.options.sha256,
                        tmp=self.names.tmp(self.uid),
                    )
                    if alias is not None:
                        return alias
            else:
                current = self._settle(current)
            if current is not None and (hit is None or refresh == "never" or offline):
                self._check_pin(current)
                return current  # published by the holder we waited for, or adopted/converted just now
            return self._fetch(current, refresh if current is not None else "never")
        finally:
            lock.release()

    def _entry(self) -> StagedModel | None:
        return lookup_entry(self.storage, self.handle.text)

    def _settle(self, current: StagedModel) -> StagedModel:
        """Under the lock: convert an entry of an older release into a revision, repair an unfinished switch."""
        meta = self.entry.meta()
        if not meta.get("revision"):
            return convert_legacy(self.entry, meta, tmp=self.names.tmp(self.uid))
        if meta.get("view") != meta.get("revision"):
            self.entry.switch(meta, previous_rev=meta.get("view"))
            return self._entry() or current
        return current

    def _fetch(self, current: StagedModel | None, refresh: str) -> StagedModel:
        source = self._source()
        validators = None
        if current is not None and refresh == "if_changed":
            validators = {k: str(current[k]) for k in ("etag", "last_modified") if current.get(k)}
            if not validators:
                log.info("No validators recorded for %s; re-downloading to compare.", self.handle.text)

        def attempt() -> StagedModel:
            stream = source.open(validators)
            if stream is None:
                return self._not_modified(current)
            try:
                return self._download(stream, previous=current)
            finally:
                stream.close()

        result: StagedModel = with_retries(attempt, self.handle.text, self.retry)
        return result

    def _download(self, stream: ArchiveStream, *, previous: StagedModel | None) -> StagedModel:
        started = time.monotonic()
        rev = new_revision_id()
        sink = self.storage.open_sink(self.names.revision(rev), self.names.tmp(self.uid))
        try:
            stats = extract_archive(
                stream,
                sink,
                source=self.handle.text,
                max_bytes=self.options.max_extracted_bytes,
                max_files=self.options.max_extracted_files,
            )
            stream.drain()
            digest = stream.sha256
            pin = self.options.sha256
            if pin is not None and digest != pin:
                raise ChecksumMismatchError(
                    f"Archive of {self.handle.text!r} has sha256 {digest}, expected {pin}; the model "
                    "changed upstream or the pin is wrong. Nothing was cached."
                )
            manifest = sink.finish()
            info = stream.info
            staged_at = utc_now()
            fetched = revision_meta(
                source_url=info.url,
                etag=info.etag,
                last_modified=info.last_modified,
                checked_at=staged_at,
                mirror=self._mirror_url(),
                page_urls=self._page_urls(),
            )
            same = self._revision_with_sha(digest)
            if same is not None:
                sink.abort()  # the same archive as a revision we have: reuse it, no second copy
                reused = self._reuse(same, fetched, previous=previous)
                aliases.record(self.storage, self.handle.text, self._page_urls())
                return reused
            meta = revision_meta(
                fetched,
                handle=self.handle.text,
                revision=rev,
                sha256=digest,
                archive_bytes=stream.bytes_read,
                files=stats.files,
                bytes=stats.bytes,
                marker=next(m for m in MODEL_MARKERS if m in manifest),
                staged_at=staged_at,
                manifest={rel: ManifestRecord(size=r.size, crc32c=r.crc32c) for rel, r in sorted(manifest.items())},
            )
            if not sink.commit():
                raise DownloadError(f"Revision {rev} of {self.handle.text!r} already exists; retrying.")
        except BaseException:
            sink.abort()
            raise
        self.entry.publish(meta, handle=self.handle.text, previous_rev=previous.get("revision") if previous else None)
        aliases.record(self.storage, self.handle.text, self._page_urls())
        log.info(
            "Staged %s into %s (%d files, %s from a %s archive in %s)",
            self.handle.text,
            self.storage.location(self.names.revision(rev)),
            stats.files,
            format_bytes_si(stats.bytes),
            format_bytes_si(stream.bytes_read),
            human_duration(time.monotonic() - started),
        )
        log.debug("Decompressed the archive of %s with %s", self.handle.text, stats.decoder)
        refreshed = previous is not None and previous["revision"] != rev
        return self.entry.result(meta, downloaded=True, refreshed=refreshed)

    def _revision_with_sha(self, digest: str) -> RevisionMeta | None:
        """The metadata of a complete revision of this entry whose archive had ``digest``, if any."""
        current = self.entry.meta()
        if current.get("revision") and current.get("sha256") == digest:
            return current
        for rev in published_revisions(self.storage, self.names):
            meta = decode_meta(self.storage.read_bytes(self.names.revision_meta(rev)))
            if meta is None or meta.get("sha256") != digest:
                continue
            if is_complete(meta, find_marker(self.storage, self.names.revision(rev), meta), locked=False):
                return meta
        return None

    def _reuse(self, meta: RevisionMeta, fetched: RevisionMeta, *, previous: StagedModel | None) -> StagedModel:
        rev = str(meta["revision"])
        merged = revision_meta(meta, **fetched)
        prev_rev = previous.get("revision") if previous else None
        if prev_rev == rev:
            current = self.entry.meta()
            self.entry.write(entry_meta(current, view=current.get("view"), **fetched))
            log.info("%s is unchanged (same archive sha256); kept revision %s.", self.handle.text, rev)
            return self.entry.result(self.entry.meta(), downloaded=True, refreshed=False)
        self.storage.write_bytes(self.names.revision_meta(rev), encode_meta(merged))
        self.entry.switch(merged, previous_rev=prev_rev)
        log.info("%s is again the archive of revision %s; switched back to it.", self.handle.text, rev)
        return self.entry.result(merged, downloaded=True, refreshed=previous is not None)

    def _not_modified(self, current: StagedModel | None) -> StagedModel:
        assert current is not None
        self._check_pin(current)
        recorded = self.entry.meta()
        meta = entry_meta(recorded, view=recorded.get("view"), checked_at=utc_now())
        self.entry.write(meta)
        log.info("%s is unchanged upstream (304); kept revision %s.", self.handle.text, meta.get("revision"))
        return self.entry.result(meta, downloaded=False, refreshed=False)

    def _source(self) -> ArchiveSource:
        kind = self.handle.kind
        if kind == "http":
            if self._session is None:
                self._session = aliases.recording_session()
            return hub_source(
                self.handle.text,
                COMPRESSED_FORMAT_QUERY,
                mirrors=self.mirrors,
                session=self._session,
                token=self.token,
                retry=self.retry,
                progress_interval=self.progress_interval,
                connections=self.download_connections,
            )
        if kind == "local_archive":
            return LocalFileSource(self.handle.text)
        if kind == "gcs_archive":
            from tfhub_cache.fetch.gcs_source import GCSArchiveSource

            return GCSArchiveSource(self.handle.text, storage=self.storage, connections=self.download_connections)
        raise InvalidHandleError(f"Cannot stage {self.handle.text!r} ({kind}).")

    def _mirror_url(self) -> str | None:
        """The mirror URL the archive was requested from (None without a mirror); metadata only."""
        if self.handle.kind != "http":
            return None
        return mirrors_mod.mirror_url(self.handle.text, self.mirrors)

    def _page_urls(self) -> list[str]:
        """The handle and the model-page URLs its download was redirected through (aliases)."""
        if self.handle.kind != "http":
            return []
        requested = self._session.requested if self._session is not None else []
        return aliases.page_urls(self.handle.text, requested)

    def _http_source(self) -> HttpSource:
        source = self._source()
        assert isinstance(source, HttpSource)
        return source

    def _check_pin(self, hit: Mapping[str, Any]) -> None:
        pin = self.options.sha256
        if pin and hit.get("sha256") and hit["sha256"] != pin:
            raise ChecksumMismatchError(
                f"Cached {self.handle.text!r} has sha256 {hit['sha256']}, expected {pin}; the pin or the "
                "cached model is outdated: stage with refresh='always' or fix the pin."
            )


def _local_dir_result(parsed: Handle) -> StagedModel:
    path = os.path.abspath(os.path.expanduser(parsed.text))
    if not os.path.isdir(path):
        raise InvalidHandleError(
            f"Model handle {parsed.text!r} is neither a URL nor an existing directory; give a tfhub.dev/Kaggle "
            "handle, an http(s)/gs:// archive URL, or the path of a SavedModel directory."
        )
    listing = [(r, os.path.getsize(os.path.join(r, f))) for r, _d, fs in os.walk(path) for f in fs]
    return staged_model(
        handle=parsed.text,
        path=parsed.text,
        files=len(listing),
        bytes=sum(s for _, s in listing),
    )
