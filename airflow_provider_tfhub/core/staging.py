"""The staging flow: handle -> cache hit? -> lock -> fetch + extract -> publish -> metadata.

Written once against :class:`~airflow_provider_tfhub.core.storage.base.Storage`, so local and
``gs://`` caches behave alike. The single correctness rule: an entry is complete for us only when
``<key>.meta.json`` exists, and that file is written last, after the model tree was published.
A cache that tensorflow_hub filled (model dir with ``saved_model.pb``, no lock, no metadata) is a
hit too, and is adopted by writing metadata for it.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from airflow_provider_tfhub.core import settings
from airflow_provider_tfhub.core.errors import (
    ChecksumMismatchError,
    ConfigurationError,
    DownloadError,
    InvalidHandleError,
    OfflineError,
)
from airflow_provider_tfhub.core.extract import check_max_files, extract_archive
from airflow_provider_tfhub.core.handles import (
    COMPRESSED_FORMAT_QUERY,
    Handle,
    parse_handle,
    with_format_query,
)
from airflow_provider_tfhub.core.layout import (
    TMP_RE,
    WRITE_TMP_RE,
    EntryNames,
    decode_meta,
    descriptor_text,
    encode_meta,
    new_uid,
    utc_now,
)
from airflow_provider_tfhub.core.locks import CacheLock
from airflow_provider_tfhub.core.storage import Storage, open_storage
from airflow_provider_tfhub.core.storage.base import MODEL_MARKERS
from airflow_provider_tfhub.core.transfer import (
    ArchiveSource,
    ArchiveStream,
    HttpSource,
    LocalFileSource,
    RetryPolicy,
    with_retries,
)

log = logging.getLogger(__name__)

#: Keys every staged-model dict has (the XCom contract of the stage operator).
RESULT_KEYS = (
    "handle",
    "path",
    "cache_dir",
    "cache_key",
    "load_format",
    "sha256",
    "bytes",
    "files",
    "etag",
    "last_modified",
    "source_url",
    "archive_bytes",
    "staged_at",
    "checked_at",
    "downloaded",
    "refreshed",
)


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
    max_extracted_files: int | None = None,
) -> dict[str, Any]:
    """Stage ``handle`` into ``cache_dir`` and return the staged-model dict (see :data:`RESULT_KEYS`).

    ``cache_dir=None`` means ``TFHUB_CACHE_DIR`` or tensorflow_hub's default. ``sha256`` pins the
    archive; a mismatch fails permanently and leaves nothing behind. ``refresh`` is ``never``
    (a cached model costs no request), ``if_changed`` (one conditional request) or ``always``.
    ``offline`` (or ``TFHUB_OFFLINE=1``) forbids any network access. ``max_extracted_files``
    caps the files and directories an archive may create (default ``TFHUB_MAX_EXTRACTED_FILES``).
    """
    parsed = parse_handle(handle)
    fmt = settings.resolve_load_format(load_format)
    mode = settings.resolve_refresh(refresh)
    pin = check_sha256(sha256)
    offline = settings.offline_from_env() if offline is None else offline

    if parsed.kind == "local_dir":
        return _local_dir_result(parsed)
    if fmt == "UNCOMPRESSED":
        if parsed.kind != "http":
            raise ConfigurationError(
                f"UNCOMPRESSED load format needs an http(s) handle, not {parsed.handle!r}; use COMPRESSED."
            )
        if offline:
            raise OfflineError(f"Offline mode: cannot resolve {parsed.handle!r} in UNCOMPRESSED mode.")
        from airflow_provider_tfhub.core.uncompressed import resolve_uncompressed

        location = resolve_uncompressed(parsed.handle, token=token, retry=retry)
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
        max_extracted_files=None if max_extracted_files is None else check_max_files(max_extracted_files),
    ).run(refresh=mode, offline=offline)


def is_cached(handle: str, cache_dir: str | None = None, *, storage_options: dict[str, Any] | None = None) -> bool:
    """True when ``handle`` is completely staged in ``cache_dir`` (no network access)."""
    parsed = parse_handle(handle)
    if parsed.kind == "local_dir":
        return os.path.isdir(parsed.handle)
    storage = open_storage(settings.resolve_cache_dir(cache_dir), **(storage_options or {}))
    return read_entry(storage, parsed.handle) is not None


def read_entry(
    storage: Storage, handle: str, *, adopt: bool = True, lock_is_ours: bool = False
) -> dict[str, Any] | None:
    """The staged-model dict of a complete entry, or None. Never touches the network.

    A tensorflow_hub-filled entry (model marker present, no metadata, no lock) is adopted: its
    metadata is written once from a listing, so later hits and ``tfhub-cache ls`` see it.
    """
    names = EntryNames(parse_handle(handle).cache_key)
    meta = decode_meta(storage.read_bytes(names.meta))
    if meta is not None:
        marker = meta.get("marker") or "saved_model.pb"
        if storage.has_file(f"{names.model}/{marker}"):
            return _result(storage, names, meta, downloaded=False)
        return None
    if not adopt:
        return None
    marker = next((m for m in MODEL_MARKERS if storage.has_file(f"{names.model}/{m}")), None)
    if marker is None or (not lock_is_ours and storage.stat(names.lock) is not None):
        return None  # a foreign lock: tensorflow_hub may still be writing (gs:// renames are copies)
    listing = list(storage.list_tree(names.model))
    meta = {
        "handle": handle,
        "source_url": None,
        "sha256": None,
        "archive_bytes": None,
        "etag": None,
        "last_modified": None,
        "files": len(listing),
        "bytes": sum(size for _, size in listing),
        "marker": marker,
        "staged_at": _mtime_iso(storage, names.model, marker),
        "checked_at": None,
        "adopted_from": "tensorflow_hub",
        "manifest": {},
    }
    try:
        storage.write_bytes(names.meta, encode_meta(meta))
    except Exception as exc:  # a read-only shared cache is still a hit
        log.debug("Could not record metadata for adopted entry %s: %s", names.model, exc)
    return _result(storage, names, meta, downloaded=False)


def uncompressed_result(parsed: Handle, location: str) -> dict[str, Any]:
    """The staged-model dict for UNCOMPRESSED mode: the model is read in place, nothing is cached."""
    return {
        "handle": parsed.handle,
        "path": location,
        "cache_dir": None,
        "cache_key": None,
        "load_format": "UNCOMPRESSED",
        "sha256": None,
        "bytes": None,
        "files": None,
        "etag": None,
        "last_modified": None,
        "source_url": location,
        "archive_bytes": None,
        "staged_at": None,
        "checked_at": utc_now(),
        "downloaded": False,
        "refreshed": False,
    }


class Stager:
    """One staging of one handle into one storage; :meth:`run` is the whole flow."""

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
        self.uid = new_uid()

    # -- the flow ---------------------------------------------------------------------------------
    def run(self, *, refresh: str, offline: bool) -> dict[str, Any]:
        hit = read_entry(self.storage, self.handle.handle)
        if hit is not None and (refresh == "never" or offline):
            self._check_pin(hit)
            self.storage.touch(self.names.meta)
            return hit
        if offline:
            raise OfflineError(
                f"Offline mode: {self.handle.handle!r} is not staged in {self.storage.location()!r}; stage it "
                "while online first, or unset TFHUB_OFFLINE / offline=True."
            )
        self.storage.ensure_root()
        lock = CacheLock(self.storage, self.names.lock, self.uid, timeout=self.lock_timeout, tmp_name=self.names.tmp)
        waiting_for_hit = hit is None
        if not lock.acquire(done=(lambda: self._entry() is not None) if waiting_for_hit else None):
            result = self._entry()
            assert result is not None
            return result
        try:
            self._remove_dead_tmp()
            current = self._entry(lock_is_ours=True)
            if current is not None and hit is None:
                return current  # published by the holder we waited for
            if current is None:
                self._remove_unfinished_model()
            return self._fetch(current, refresh if current is not None else "never")
        finally:
            lock.release()

    def _entry(self, *, lock_is_ours: bool = False) -> dict[str, Any] | None:
        return read_entry(self.storage, self.handle.handle, lock_is_ours=lock_is_ours)

    def _fetch(self, current: dict[str, Any] | None, refresh: str) -> dict[str, Any]:
        source = self._source()
        validators = None
        if current is not None and refresh == "if_changed":
            validators = {k: current[k] for k in ("etag", "last_modified") if current.get(k)}
            if not validators:
                log.info("No validators recorded for %s; re-downloading to compare.", self.handle.handle)

        def attempt() -> dict[str, Any]:
            stream = source.open(validators)
            if stream is None:
                return self._not_modified(current)
            try:
                return self._download(stream, replace=current is not None, previous=current)
            finally:
                stream.close()

        result: dict[str, Any] = with_retries(attempt, self.handle.handle, self.retry)
        return result

    def _download(self, stream: ArchiveStream, *, replace: bool, previous: dict[str, Any] | None) -> dict[str, Any]:
        started = time.monotonic()
        sink = self.storage.open_sink(self.names.model, self.names.tmp(self.uid), replace=replace)
        try:
            stats = extract_archive(
                stream,
                sink,
                source=self.handle.handle,
                max_bytes=self.max_extracted_bytes,
                max_files=self.max_extracted_files,
            )
            stream.drain()
            digest = stream.sha256
            if self.sha256 is not None and digest != self.sha256:
                raise ChecksumMismatchError(
                    f"Archive of {self.handle.handle!r} has sha256 {digest}, expected {self.sha256}; the model "
                    "changed upstream or the pin is wrong. Nothing was cached."
                )
            manifest = sink.finish()
            marker = next(m for m in MODEL_MARKERS if m in manifest)
            info = stream.info
            staged_at = utc_now()
            meta = {
                "handle": self.handle.handle,
                "source_url": info.url,
                "sha256": digest,
                "archive_bytes": stream.bytes_read,
                "etag": info.etag,
                "last_modified": info.last_modified,
                "files": stats.files,
                "bytes": stats.bytes,
                "marker": marker,
                "staged_at": staged_at,
                "checked_at": staged_at,
                "manifest": {rel: {"size": r.size, "crc32c": r.crc32c} for rel, r in sorted(manifest.items())},
            }
            self.storage.write_bytes(self.names.descriptor, descriptor_text(self.handle.handle).encode("utf8"))
            if replace and not self.storage.atomic_publish:
                self.storage.delete(self.names.meta)  # our readers stop trusting the old tree first
            if not sink.commit(replace=replace):
                existing = self._entry(lock_is_ours=True)
                if existing is not None:
                    return existing
                raise DownloadError(f"Another stager published {self.handle.handle!r} incompletely; retrying.")
        except BaseException:
            sink.abort()
            raise
        self.storage.write_bytes(self.names.meta, encode_meta(meta))
        elapsed = time.monotonic() - started
        log.info(
            "Staged %s into %s: %d files, %.1f MB from a %.1f MB archive in %.1fs (%s).",
            self.handle.handle,
            self.storage.location(self.names.model),
            stats.files,
            stats.bytes / 1e6,
            stream.bytes_read / 1e6,
            elapsed,
            stats.decoder,
        )
        return _result(self.storage, self.names, meta, downloaded=True, refreshed=previous is not None)

    def _not_modified(self, current: dict[str, Any] | None) -> dict[str, Any]:
        assert current is not None
        self._check_pin(current)
        meta = decode_meta(self.storage.read_bytes(self.names.meta)) or {}
        meta["checked_at"] = utc_now()
        self.storage.write_bytes(self.names.meta, encode_meta({k: v for k, v in meta.items() if k != "format_version"}))
        log.info("%s is unchanged upstream (304); kept the cached copy.", self.handle.handle)
        return _result(self.storage, self.names, meta, downloaded=False, refreshed=False)

    def _source(self) -> ArchiveSource:
        kind = self.handle.kind
        if kind == "http":
            return HttpSource(
                with_format_query(self.handle.handle, COMPRESSED_FORMAT_QUERY),
                token=self.token,
                token_host=self.handle.host,
                retry=self.retry,
                progress_interval=self.progress_interval,
                description=self.handle.handle,
            )
        if kind == "local_archive":
            return LocalFileSource(self.handle.handle)
        if kind == "gcs_archive":
            from airflow_provider_tfhub.core.storage.gcs import GCSArchiveSource

            return GCSArchiveSource(self.handle.handle, storage=self.storage)
        raise InvalidHandleError(f"Cannot stage {self.handle.handle!r} ({kind}).")

    def _check_pin(self, hit: dict[str, Any]) -> None:
        if self.sha256 and hit.get("sha256") and hit["sha256"] != self.sha256:
            raise ChecksumMismatchError(
                f"Cached {self.handle.handle!r} has sha256 {hit['sha256']}, expected {self.sha256}; the pin or the "
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


def _result(
    storage: Storage, names: EntryNames, meta: dict[str, Any], *, downloaded: bool, refreshed: bool = False
) -> dict[str, Any]:
    return {
        "handle": meta.get("handle"),
        "path": storage.location(names.model),
        "cache_dir": storage.location(),
        "cache_key": names.key,
        "load_format": "COMPRESSED",
        "sha256": meta.get("sha256"),
        "bytes": meta.get("bytes"),
        "files": meta.get("files"),
        "etag": meta.get("etag"),
        "last_modified": meta.get("last_modified"),
        "source_url": meta.get("source_url"),
        "archive_bytes": meta.get("archive_bytes"),
        "staged_at": meta.get("staged_at"),
        "checked_at": meta.get("checked_at"),
        "downloaded": downloaded,
        "refreshed": refreshed,
    }


def _local_dir_result(parsed: Handle) -> dict[str, Any]:
    path = os.path.abspath(os.path.expanduser(parsed.handle))
    if not os.path.isdir(path):
        raise InvalidHandleError(
            f"Model handle {parsed.handle!r} is neither a URL nor an existing directory; give a tfhub.dev/Kaggle "
            "handle, an http(s)/gs:// archive URL, or the path of a SavedModel directory."
        )
    listing = [(r, os.path.getsize(os.path.join(r, f))) for r, _d, fs in os.walk(path) for f in fs]
    return {
        **dict.fromkeys(RESULT_KEYS),
        "handle": parsed.handle,
        "path": parsed.handle,
        "load_format": "COMPRESSED",
        "files": len(listing),
        "bytes": sum(s for _, s in listing),
        "downloaded": False,
        "refreshed": False,
    }


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
