"""The staging flow: handle -> cache hit? -> lock -> fetch + extract -> publish -> metadata.

Written once against :class:`~tfhub_cache.storage.base.Storage`, so local and
``gs://`` caches behave alike. The single correctness rule: an entry is complete for us only when
``<key>.meta.json`` exists, and that file is written last, after the model tree was published.
A cache that tensorflow_hub filled (model dir with ``saved_model.pb``, no lock, no metadata) is a
hit too, and is adopted by writing metadata for it.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from tfhub_cache import settings
from tfhub_cache.archive.extract import check_max_files, extract_archive
from tfhub_cache.cache import aliases
from tfhub_cache.cache.layout import (
    REVISION_RE,
    TMP_RE,
    WRITE_TMP_RE,
    EntryNames,
    decode_meta,
    descriptor_text,
    encode_meta,
    find_marker,
    is_complete,
    new_revision_id,
    new_uid,
    tree_of,
    utc_now,
)
from tfhub_cache.cache.locks import CacheLock
from tfhub_cache.cache.records import (
    RESULT_KEYS,
    EntryMeta,
    ManifestRecord,
    RevisionMeta,
    StagedModel,
    entry_meta,
    revision_meta,
    staged_model,
)
from tfhub_cache.errors import (
    CacheError,
    ChecksumMismatchError,
    ConfigurationError,
    DownloadError,
    InvalidHandleError,
    OfflineError,
)
from tfhub_cache.fetch import mirrors as mirrors_mod
from tfhub_cache.fetch.ranged import connections_from
from tfhub_cache.fetch.transfer import (
    ArchiveSource,
    ArchiveStream,
    HttpSource,
    LocalFileSource,
    RetryPolicy,
    with_retries,
)
from tfhub_cache.handles import (
    COMPRESSED_FORMAT_QUERY,
    Handle,
    is_archive_name,
    kaggle_equivalents,
    parse_handle,
    with_format_query,
)
from tfhub_cache.storage import Storage, open_storage
from tfhub_cache.storage.base import MODEL_MARKERS
from tfhub_cache.units import human_bytes, human_duration

log = logging.getLogger(__name__)

__all__ = ["RESULT_KEYS", "StagedModel", "is_cached", "lookup_entry", "stage"]


def stage(
    handle: str,
    cache_dir: str | None = None,
    *,
    sha256: str | None = None,
    token: str | None = None,
    load_format: str | None = None,
    refresh: str | None = "never",
    offline: bool | None = None,
    lock_timeout: float | None = None,
    retry: RetryPolicy | None = None,
    storage_options: dict[str, Any] | None = None,
    max_extracted_bytes: int | None = None,
    progress_interval: float = 5.0,
    mirrors: Mapping[str, str] | str | None = None,
    download_connections: int | None = None,
    max_extracted_files: int | None = None,
) -> StagedModel:
    """Stage ``handle`` into ``cache_dir`` and return the staged-model dict (see :data:`RESULT_KEYS`).

    ``cache_dir=None`` means ``TFHUB_CACHE_DIR`` or tensorflow_hub's default. ``sha256`` pins the
    archive; a mismatch fails permanently and leaves nothing behind. ``refresh`` is ``never``
    (a cached model costs no request), ``if_changed`` (one conditional request) or ``always``.
    ``offline`` (or ``TFHUB_OFFLINE=1``) forbids any network access. ``mirrors`` (URL prefix ->
    mirror prefix; default ``TFHUB_MIRRORS``) rewrites only the URL that is fetched.
    ``download_connections`` (or ``TFHUB_DOWNLOAD_CONNECTIONS``, default 8) fetches big archives as
    parallel ranged parts; ``1`` downloads with one stream.
    ``offline`` (or ``TFHUB_OFFLINE=1``) forbids any network access. ``max_extracted_files``
    caps the files and directories an archive may create (default ``TFHUB_MAX_EXTRACTED_FILES``).
    """
    parsed = parse_handle(handle)
    mirror_map = mirrors_mod.resolve_mirrors(mirrors)
    connections = connections_from(download_connections)
    fmt = settings.resolve_load_format(load_format)
    mode = settings.resolve_refresh(refresh)
    pin = check_sha256(sha256)
    offline = settings.offline_from_env() if offline is None else offline

    if parsed.kind == "local_dir":
        return _local_dir_result(parsed)
    if fmt == "UNCOMPRESSED":
        if parsed.kind != "http":
            raise ConfigurationError(
                f"UNCOMPRESSED load format needs an http(s) handle, not {parsed.text!r}; use COMPRESSED."
            )
        if offline:
            raise OfflineError(f"Offline mode: cannot resolve {parsed.text!r} in UNCOMPRESSED mode.")
        from tfhub_cache.fetch.uncompressed import resolve_uncompressed

        location = resolve_uncompressed(parsed.text, token=token, retry=retry, mirrors=mirror_map)
        return uncompressed_result(parsed, location)

    storage = open_storage(settings.resolve_cache_dir(cache_dir), **(storage_options or {}))
    return Stager(
        storage,
        parsed,
        sha256=pin,
        token=token,
        lock_timeout=settings.resolve_lock_timeout(lock_timeout),
        retry=retry or RetryPolicy.from_env(),
        max_extracted_bytes=max_extracted_bytes,
        progress_interval=progress_interval,
        mirrors=mirror_map,
        download_connections=connections,
        max_extracted_files=None if max_extracted_files is None else check_max_files(max_extracted_files),
    ).run(refresh=mode, offline=offline)


def is_cached(handle: str, cache_dir: str | None = None, *, storage_options: dict[str, Any] | None = None) -> bool:
    """True when ``handle`` is completely staged in ``cache_dir`` (no network access)."""
    parsed = parse_handle(handle)
    if parsed.kind == "local_dir":
        return os.path.isdir(parsed.text)
    storage = open_storage(settings.resolve_cache_dir(cache_dir), **(storage_options or {}))
    return lookup_entry(storage, parsed.text) is not None


def lookup_entry(storage: Storage, handle: str) -> StagedModel | None:
    """The staged-model dict of a complete entry, or None. Reads only; never touches the network.

    Complete means: metadata naming a revision whose model marker exists (or, for an entry
    written before revisions existed, metadata plus the marker in the model dir). A directory that
    tensorflow_hub filled is not an entry until a stager adopts it (see :meth:`Stager.run`).
    """
    names = EntryNames(parse_handle(handle).cache_key)
    meta = complete_meta(storage, names)
    return None if meta is None else _result(storage, names, meta, downloaded=False)


def complete_meta(storage: Storage, names: EntryNames) -> EntryMeta | None:
    """The entry's metadata when the tree it names is complete (:func:`~.layout.is_complete`), else None."""
    meta = decode_meta(storage.read_bytes(names.meta))
    if meta is None:
        return None
    marker = find_marker(storage, tree_of(names, meta), meta)
    return meta if is_complete(meta, marker, locked=False) else None


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

    def __init__(
        self,
        storage: Storage,
        handle: Handle,
        *,
        sha256: str | None,
        token: str | None,
        lock_timeout: float,
        retry: RetryPolicy,
        max_extracted_bytes: int | None,
        progress_interval: float,
        mirrors: Mapping[str, str] | None = None,
        download_connections: int | None = None,
        max_extracted_files: int | None = None,
    ) -> None:
        self.storage = storage
        self.handle = handle
        self.names = EntryNames(handle.cache_key)
        self.sha256 = sha256
        self.token = token
        self.lock_timeout = lock_timeout
        self.retry = retry
        self.max_extracted_bytes = max_extracted_bytes
        self.max_extracted_files = max_extracted_files
        self.progress_interval = progress_interval
        self.download_connections = download_connections
        self.uid = new_uid()
        self.mirrors = dict(mirrors or {})
        self._session: Any = None  # records the redirect chain of an HTTP download (aliases)
        self._meta_token: str | None = None

    # -- the flow ---------------------------------------------------------------------------------
    def run(self, *, refresh: str, offline: bool) -> StagedModel:
        hit_meta = complete_meta(self.storage, self.names)
        hit = None if hit_meta is None else _result(self.storage, self.names, hit_meta, downloaded=False)
        if hit_meta is not None and hit is not None and (refresh == "never" or offline) and _settled(hit_meta):
            self._check_pin(hit)
            self.storage.touch(self.names.meta)
            return hit
        if hit is None and offline and not self._tfhub_marker():
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
        lock = CacheLock(self.storage, self.names.lock, self.uid, timeout=self.lock_timeout, tmp_name=self.names.tmp)
        waiting_for_hit = hit is None
        if not lock.acquire(done=(lambda: self._entry() is not None) if waiting_for_hit else None):
            result = self._entry()
            assert result is not None
            return result
        try:
            self._remove_dead_tmp()
            meta_stat = self.storage.stat(self.names.meta)
            self._meta_token = meta_stat.token if meta_stat is not None else None
            current = self._entry()
            if current is None:
                current = self._adopt_tfhub_dir()
                if current is None:
                    if offline:
                        raise OfflineError(
                            f"Offline mode: {self.handle.text!r} is not staged in {self.storage.location()!r}; "
                            "stage it while online first, or unset TFHUB_OFFLINE / offline=True."
                        )
                    self._remove_unfinished_model()
                    alias = self._stage_as_alias()
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

    def _meta(self) -> EntryMeta:
        return decode_meta(self.storage.read_bytes(self.names.meta)) or EntryMeta()

    def _settle(self, current: StagedModel) -> StagedModel:
        """Under the lock: convert an entry of an older release into a revision, repair an unfinished switch."""
        meta = self._meta()
        if not meta.get("revision"):
            return self._convert_legacy(meta)
        if meta.get("view") != meta.get("revision"):
            self._switch(meta, previous_rev=meta.get("view"))
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
                max_bytes=self.max_extracted_bytes,
                max_files=self.max_extracted_files,
            )
            stream.drain()
            digest = stream.sha256
            if self.sha256 is not None and digest != self.sha256:
                raise ChecksumMismatchError(
                    f"Archive of {self.handle.text!r} has sha256 {digest}, expected {self.sha256}; the model "
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
        self.storage.write_bytes(self.names.revision_meta(rev), encode_meta(meta))
        self.storage.write_bytes(self.names.descriptor, descriptor_text(self.handle.text).encode("utf8"))
        self._switch(meta, previous_rev=previous.get("revision") if previous else None)
        aliases.record(self.storage, self.handle.text, self._page_urls())
        log.info(
            "Staged %s into %s (%d files, %s from a %s archive in %s)",
            self.handle.text,
            self.storage.location(self.names.revision(rev)),
            stats.files,
            human_bytes(stats.bytes),
            human_bytes(stream.bytes_read),
            human_duration(time.monotonic() - started),
        )
        log.debug("Decompressed the archive of %s with %s", self.handle.text, stats.decoder)
        refreshed = previous is not None and previous["revision"] != rev
        return _result(self.storage, self.names, meta, downloaded=True, refreshed=refreshed)

    def _revision_with_sha(self, digest: str) -> RevisionMeta | None:
        """The metadata of a complete revision of this entry whose archive had ``digest``, if any."""
        current = self._meta()
        if current.get("revision") and current.get("sha256") == digest:
            return current
        for rev in revision_ids(self.storage, self.names):
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
            current = self._meta()
            self._write_entry_meta(entry_meta(current, view=current.get("view"), **fetched))
            log.info("%s is unchanged (same archive sha256); kept revision %s.", self.handle.text, rev)
            return _result(self.storage, self.names, self._meta(), downloaded=True, refreshed=False)
        self.storage.write_bytes(self.names.revision_meta(rev), encode_meta(merged))
        self._switch(merged, previous_rev=prev_rev)
        log.info("%s is again the archive of revision %s; switched back to it.", self.handle.text, rev)
        return _result(self.storage, self.names, merged, downloaded=True, refreshed=previous is not None)

    def _switch(self, meta: RevisionMeta, *, previous_rev: str | None) -> None:
        """Make ``meta``'s revision current: metadata first (our readers), then the tensorflow_hub view.

        The metadata write carries a precondition (the generation read under the lock), so a stager
        that lost its lock cannot overwrite a newer switch. The old revision is stamped
        ``superseded_at``, which starts its grace period.
        """
        rev = str(meta["revision"])
        entry = entry_meta(meta, view=previous_rev if previous_rev != rev else rev)
        self._write_entry_meta(entry)
        self.storage.publish_view(self.names.model, self.names.revision(rev), self.names.tmp(new_uid()))
        self._write_entry_meta(entry_meta(entry, view=rev))
        if previous_rev and previous_rev != rev:
            old = decode_meta(self.storage.read_bytes(self.names.revision_meta(previous_rev)))
            if old is not None and not old.get("superseded_at"):
                superseded = revision_meta(old, superseded_at=utc_now())
                self.storage.write_bytes(self.names.revision_meta(previous_rev), encode_meta(superseded))

    def _write_entry_meta(self, meta: EntryMeta) -> None:
        token = self.storage.write_bytes_if(self.names.meta, encode_meta(meta), token=self._meta_token)
        if token is None:
            raise CacheError(
                f"{self.storage.location(self.names.meta)} was changed by another stager while we held its lock "
                "(the lock was taken over: is lock_timeout too short for this model?); retry the task."
            )
        self._meta_token = token

    def _not_modified(self, current: StagedModel | None) -> StagedModel:
        assert current is not None
        self._check_pin(current)
        recorded = self._meta()
        meta = entry_meta(recorded, view=recorded.get("view"), checked_at=utc_now())
        self._write_entry_meta(meta)
        log.info("%s is unchanged upstream (304); kept revision %s.", self.handle.text, meta.get("revision"))
        return _result(self.storage, self.names, meta, downloaded=False, refreshed=False)

    # -- entries of tensorflow_hub and of older releases ---------------------------------------------
    def _tfhub_marker(self) -> str | None:
        return find_marker(self.storage, self.names.model, None)

    def _adopt_tfhub_dir(self) -> StagedModel | None:
        """A model dir that tensorflow_hub filled (marker, no metadata) becomes a revision, no bytes copied."""
        marker = self._tfhub_marker()
        if marker is None:
            return None
        target = self.storage.view_target(self.names.model)
        rev = target.rpartition("/")[2] if target else ""
        if target == self.names.revision(rev) and REVISION_RE.match(rev):
            # Our own view whose entry metadata was lost (e.g. removed by hand): the revision is intact.
            recorded = decode_meta(self.storage.read_bytes(self.names.revision_meta(rev)))
            if recorded is not None:
                self._switch(recorded, previous_rev=rev)
                return _result(self.storage, self.names, recorded, downloaded=False)
        meta = revision_meta(
            handle=self.handle.text,
            source_url=None,
            sha256=None,
            archive_bytes=None,
            etag=None,
            last_modified=None,
            marker=marker,
            staged_at=_mtime_iso(self.storage, self.names.model, marker),
            checked_at=None,
            adopted_from="tensorflow_hub",
            manifest={},
        )
        return self._convert(meta, "Adopted tensorflow_hub's")

    def _convert_legacy(self, meta: EntryMeta) -> StagedModel:
        return self._convert(meta, "Converted")

    def _convert(self, recorded: RevisionMeta, verb: str) -> StagedModel:
        rev = new_revision_id()
        target = self.names.revision(rev)
        self.storage.clone_tree(self.names.model, target, self.names.tmp(self.uid))
        listing = list(self.storage.list_tree(target))
        meta = revision_meta(recorded, revision=rev, files=len(listing), bytes=sum(size for _, size in listing))
        self.storage.write_bytes(self.names.revision_meta(rev), encode_meta(meta))
        self._switch(meta, previous_rev=None)
        log.info("%s %s into revision %s.", verb, self.storage.location(self.names.model), rev)
        return _result(self.storage, self.names, meta, downloaded=False)

    def _source(self) -> ArchiveSource:
        kind = self.handle.kind
        if kind == "http":
            fetch_url = mirrors_mod.rewrite(self.handle.text, self.mirrors)
            if self._session is None:
                self._session = aliases.recording_session()
            return HttpSource(
                with_format_query(fetch_url, COMPRESSED_FORMAT_QUERY),
                session=self._session,
                token=self.token,
                token_host=urllib.parse.urlsplit(fetch_url).netloc,  # with a mirror, the mirror's host
                retry=self.retry,
                progress_interval=self.progress_interval,
                description=self.handle.text,
                connections=self.download_connections,
            )
        if kind == "local_archive":
            return LocalFileSource(self.handle.text)
        if kind == "gcs_archive":
            from tfhub_cache.storage.gcs import GCSArchiveSource

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

    # -- aliases ------------------------------------------------------------------------------------
    def _other_entry(self, handle: str) -> dict[str, Any] | None:
        """Another handle's complete entry, with the metadata it recorded (page URLs, revision)."""
        try:
            names = EntryNames(parse_handle(handle).cache_key)
        except InvalidHandleError:
            return None
        meta = complete_meta(self.storage, names)
        if meta is None or not meta.get("revision"):
            return None  # an entry of an older release is converted when it is staged again, not here
        entry = dict(_result(self.storage, names, meta, downloaded=False))
        return {**entry, "page_urls": meta.get("page_urls") or [], "_meta": meta, "_tree": tree_of(names, meta)}

    def _alias_by_redirects(self) -> tuple[list[str], dict[str, Any] | None]:
        """The page URLs of this handle's redirects and the entry of another handle among them (or None)."""
        source = self._source()
        assert isinstance(source, HttpSource)

        def known(url: str) -> bool:
            return aliases.lookup(self.storage, [url], exclude=self.handle.text, read=self._other_entry) is not None

        try:
            hops = aliases.resolve_first_hops(source, known)
        except DownloadError as exc:
            log.debug("Could not resolve the redirects of %s (%s); downloading it.", self.handle.text, exc)
            return [], None
        return hops, aliases.lookup(self.storage, hops, exclude=self.handle.text, read=self._other_entry)

    def _stage_as_alias(self) -> StagedModel | None:
        """On a miss: if the handle redirects to a model another entry was downloaded through, publish a
        revision of this entry built from that entry's current revision (hard links locally, server-side
        copies on gs://), with no archive download. None when there is no such entry."""
        if self.handle.kind != "http" or is_archive_name(urllib.parse.urlsplit(self.handle.text).path):
            return None  # a direct archive URL is no model page (and its first hop would be the archive)
        if not aliases.has_index(self.storage):
            return None  # nothing indexed yet: no request spent on resolving redirects
        hops = kaggle_equivalents(self.handle.text)  # another spelling of the same Kaggle model: no request
        other = aliases.lookup(self.storage, hops, exclude=self.handle.text, read=self._other_entry)
        if other is None:
            hops, other = self._alias_by_redirects()
        if other is None or (self.sha256 is not None and other.get("sha256") != self.sha256):
            return None
        rev = new_revision_id()
        self.storage.clone_tree(other["_tree"], self.names.revision(rev), self.names.tmp(self.uid))
        now = utc_now()
        page_list: list[str] = list(dict.fromkeys([self.handle.text, *hops, *other["page_urls"]]))
        recorded: EntryMeta = other["_meta"]
        meta = revision_meta(
            recorded,
            handle=self.handle.text,
            revision=rev,
            alias_of=recorded.get("alias_of") or other["handle"],
            page_urls=page_list,
            mirror=None,
            staged_at=now,
            checked_at=now,
        )
        self.storage.write_bytes(self.names.revision_meta(rev), encode_meta(meta))
        self.storage.write_bytes(self.names.descriptor, descriptor_text(self.handle.text).encode("utf8"))
        self._switch(meta, previous_rev=None)
        aliases.record(self.storage, self.handle.text, page_list)
        log.info(
            "%s is the same model as %s (it redirects to %s): staged revision %s from its files, nothing downloaded.",
            self.handle.text,
            meta["alias_of"],
            next((u for u in hops if u in other["page_urls"]), other["handle"]),
            rev,
        )
        return _result(self.storage, self.names, meta, downloaded=False)

    def _check_pin(self, hit: Mapping[str, Any]) -> None:
        if self.sha256 and hit.get("sha256") and hit["sha256"] != self.sha256:
            raise ChecksumMismatchError(
                f"Cached {self.handle.text!r} has sha256 {hit['sha256']}, expected {self.sha256}; the pin or the "
                "cached model is outdated: stage with refresh='always' or fix the pin."
            )

    # -- housekeeping under the lock -----------------------------------------------------------------
    def _remove_dead_tmp(self) -> None:
        """Any other ``<key>.<uid>.tmp`` (or cut-short small write) is a dead stager's: we hold the lock now."""
        for name in self.storage.list_root(prefix=f"{self.names.key}."):
            match = TMP_RE.match(name)
            if (match and match.group("uid") != self.uid) or (WRITE_TMP_RE.match(name) and self._is_old(name)):
                freed = self.storage.delete_tree(name)
                log.info("Removed leftover %s of a stager that died (%d bytes).", name, freed)
            elif name == self.names.revisions:
                self._remove_unpublished_revisions()

    def _remove_unpublished_revisions(self) -> None:
        """A revision dir without its ``<rev>.json`` was never published: a dead stager's upload."""
        dirs, published = set(), set()
        for rel, _size in self.storage.list_tree(self.names.revisions):
            head, sep, _rest = rel.partition("/")
            if sep:
                dirs.add(head)
            elif rel.endswith(".json"):
                published.add(rel[: -len(".json")])
        current = self._meta().get("revision")
        for rev in sorted(dirs - published - {current}):
            freed = self.storage.delete_tree(self.names.revision(rev))
            log.info("Removed unpublished revision %s of a stager that died (%d bytes).", rev, freed)

    def _is_old(self, name: str, age: float = 60.0) -> bool:
        """Small-write temp files of live waiters exist for microseconds; only old ones are leftovers."""
        stat = self.storage.stat(name)
        return stat is not None and time.time() - stat.mtime > age

    def _remove_unfinished_model(self) -> None:
        """A model dir without metadata and without a model marker is a half model: remove it."""
        if self.storage.tree_is_nonempty(self.names.model):
            freed = self.storage.delete_tree(self.names.model)
            log.warning(
                "Removed incomplete %s (%d bytes) left by an interrupted stager or a temp cleaner.",
                self.storage.location(self.names.model),
                freed,
            )


def _settled(meta: EntryMeta) -> bool:
    """A hit needs no work: it names a revision, and the tensorflow_hub view shows that revision."""
    return bool(meta.get("revision")) and meta.get("view") == meta.get("revision")


def revision_ids(storage: Storage, names: EntryNames) -> list[str]:
    """Ids of the revisions of an entry that have their metadata written (published ones)."""
    ids = []
    for rel, _size in storage.list_tree(names.revisions):
        if "/" not in rel and rel.endswith(".json") and REVISION_RE.match(rel[: -len(".json")]):
            ids.append(rel[: -len(".json")])
    return sorted(ids)


def _result(
    storage: Storage, names: EntryNames, meta: RevisionMeta, *, downloaded: bool, refreshed: bool = False
) -> StagedModel:
    return staged_model(
        handle=meta.get("handle"),
        path=storage.location(tree_of(names, meta)),
        meta=meta,
        cache_dir=storage.location(),
        cache_key=names.key,
        downloaded=downloaded,
        refreshed=refreshed,
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


def check_sha256(value: str | None) -> str | None:
    if value is None or not str(value).strip():
        return None
    text = str(value).strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ConfigurationError(f"sha256={value!r} is not a 64-character hex digest.")
    return text


def _mtime_iso(storage: Storage, model: str, marker: str) -> str | None:
    import datetime

    stat = storage.stat(f"{model}/{marker}")
    if stat is None:
        return None
    return datetime.datetime.fromtimestamp(stat.mtime, datetime.timezone.utc).isoformat(timespec="seconds")
