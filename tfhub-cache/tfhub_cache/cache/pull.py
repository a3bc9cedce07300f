"""Pull a staged revision from a shared cache (usually ``gs://``) into another one (usually a local disk).

The shared cache already paid for the hub download and the inflate; the machine that trains only
needs the files. A pull copies a revision's files as they are (no hub request, no gzip inflate):
objects are read in parallel (small ones whole, on a pool of connections; big ones as parallel
ranged parts), each is checked against the revision's manifest (size and CRC32C) before anything
is published, and the revision is then published through the stager's own path: the tree, its
metadata, the entry metadata, the tensorflow_hub view. So the local entry carries the **same
revision id**, metadata and manifest as the shared one, ``hub.load(handle)`` finds it offline, and
``ls``/``verify``/``prune`` treat it as any other entry.

Concurrent pullers of one entry into one cache take its lock: one copies, the others wait and
return its result. A pull killed midway leaves a tmp dir or an unpublished revision dir (never the
metadata that makes an entry complete); the next pull takes the dead holder's lock over, removes
those leftovers and copies again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from tfhub_cache import settings
from tfhub_cache.cache.entries import EntryWriter, lookup_entry
from tfhub_cache.cache.layout import EntryNames, decode_meta, find_marker, new_uid
from tfhub_cache.cache.leftovers import remove_dead_leftovers
from tfhub_cache.cache.locks import CacheLock
from tfhub_cache.cache.records import RevisionMeta, StagedModel, revision_meta
from tfhub_cache.errors import CacheError, ChecksumMismatchError, ConfigurationError
from tfhub_cache.fetch.ranged import connections_from, plan_parts
from tfhub_cache.fetch.streams import SourceInfo
from tfhub_cache.handles import Handle, require_cacheable
from tfhub_cache.storage import Storage, open_storage
from tfhub_cache.storage.base import CHUNK_SIZE
from tfhub_cache.units import format_bytes_si, human_duration

if TYPE_CHECKING:
    from tfhub_cache.storage.gcs import GCSStorage

log = logging.getLogger(__name__)

__all__ = ["PulledModel", "pull"]

#: Files up to this size are read whole by one pool worker (unless gs:// ranged parts pay off for them).
WHOLE_READ_MAX = 8 << 20
#: Bytes of small files read ahead of the writer at most (bounds the memory a pull adds).
READ_AHEAD_BYTES = 64 << 20


class PulledModel(StagedModel):
    """The staged-model record of the pulled entry, plus the cache it was pulled from."""

    pulled_from: str


def pull(
    handle: str,
    source: str,
    cache_dir: str | None = None,
    revision: str | None = None,
    *,
    lock_timeout: float | None = None,
    connections: int | None = None,
    source_options: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> PulledModel:
    """Copy ``handle``'s revision from the cache ``source`` into ``cache_dir`` and make it current there.

    ``revision`` defaults to the source's current revision. ``cache_dir=None`` means
    ``TFHUB_CACHE_DIR`` or tensorflow_hub's default. ``connections`` (or ``TFHUB_DOWNLOAD_CONNECTIONS``,
    default 8) is how many objects, or ranged parts of a big one, are read at once.
    ``source_options``/``storage_options`` go to the gs:// backend of either side (credentials...).
    """
    parsed = require_cacheable(handle)
    if not source or not str(source).strip():
        raise ConfigurationError("pull needs the shared cache to pull from (--from gs://bucket/prefix).")
    src = open_storage(settings.resolve_cache_dir(str(source)), **(source_options or {}))
    dst = open_storage(settings.resolve_cache_dir(cache_dir), **(storage_options or {}))
    if src.location() == dst.location():
        raise ConfigurationError(f"pull source and destination are the same cache ({src.location()}).")
    return Puller(
        src,
        dst,
        parsed,
        lock_timeout=settings.resolve_lock_timeout(lock_timeout),
        connections=connections_from(connections),
    ).run(revision.strip() if revision else None)


class Puller:
    """One pull of one entry from ``src`` into ``dst``; :meth:`run` is the whole flow."""

    def __init__(self, src: Storage, dst: Storage, handle: Handle, *, lock_timeout: float, connections: int) -> None:
        self.src = src
        self.dst = dst
        self.handle = handle
        self.names = EntryNames(handle.cache_key)
        self.lock_timeout = lock_timeout
        self.connections = connections

    def run(self, revision: str | None) -> PulledModel:
        meta = self._source_meta(revision)
        rev = str(meta["revision"])
        hit = self._current(rev)
        if hit is not None:
            self.dst.touch(self.names.meta)
            return self._pulled(hit)
        self.dst.ensure_root()
        uid = new_uid()
        entry = EntryWriter(self.dst, self.names)
        lock = CacheLock(self.dst, self.names.lock, uid, timeout=self.lock_timeout, tmp_name=self.names.tmp)
        if not lock.acquire(done=lambda: self._current(rev) is not None):
            done = self._current(rev)
            assert done is not None
            return self._pulled(done)
        try:
            remove_dead_leftovers(
                self.dst, self.names, own_uid=uid, current_revision=lambda: entry.meta().get("revision")
            )
            entry.remember_generation()
            current = self._current(rev)
            if current is not None:
                return self._pulled(current)
            if not self._has_revision(rev):
                self._copy(meta, uid)
            previous = entry.meta().get("revision")
            entry.publish(meta, handle=self.handle.text, previous_rev=previous)
            return self._pulled(entry.result(meta, downloaded=False, refreshed=previous not in (None, rev)))
        finally:
            lock.release()

    # -- what to pull -------------------------------------------------------------------------------
    def _source_meta(self, revision: str | None) -> RevisionMeta:
        where = self.src.location()
        if revision is None:
            entry = lookup_entry(self.src, self.handle.text)
            if entry is None:
                raise CacheError(
                    f"{self.handle.text!r} is not staged in {where}; stage it there first "
                    f"(tfhub-cache stage {self.handle.text} --cache-dir {where})."
                )
            revision = entry.get("revision")
            if not revision:
                raise CacheError(
                    f"{self.handle.text!r} in {where} was staged by an older release (no revision); stage it there "
                    "again with this release (refresh='always') before pulling it."
                )
        meta = decode_meta(self.src.read_bytes(self.names.revision_meta(revision)))
        if meta is None or meta.get("revision") != revision:
            raise CacheError(
                f"Revision {revision!r} of {self.handle.text!r} does not exist in {where} (no "
                f"{self.src.location(self.names.revision_meta(revision))}); omit the revision to pull the current one."
            )
        if not meta.get("manifest"):
            raise CacheError(
                f"Revision {revision} of {self.handle.text!r} in {where} has no manifest (it was adopted from a "
                "tensorflow_hub download), so its files cannot be verified; stage it there with refresh='always'."
            )
        return revision_meta(meta)

    def _current(self, rev: str) -> StagedModel | None:
        """The destination's entry when ``rev`` is already current there (and settled), else None."""
        entry = lookup_entry(self.dst, self.handle.text)
        if entry is None or entry.get("revision") != rev:
            return None
        meta = decode_meta(self.dst.read_bytes(self.names.meta)) or {}
        return entry if meta.get("view") == rev else None

    def _has_revision(self, rev: str) -> bool:
        """True when ``dst`` already holds ``rev`` published (an earlier pull, not current any more)."""
        meta = decode_meta(self.dst.read_bytes(self.names.revision_meta(rev)))
        return meta is not None and find_marker(self.dst, self.names.revision(rev), meta) is not None

    def _pulled(self, result: StagedModel) -> PulledModel:
        return PulledModel(**result, pulled_from=self.src.location())

    # -- the copy -----------------------------------------------------------------------------------
    def _copy(self, meta: RevisionMeta, uid: str) -> None:
        rev = str(meta["revision"])
        manifest = meta["manifest"]
        tree = self.names.revision(rev)
        started = time.monotonic()
        total = sum(int(r["size"]) for r in manifest.values())
        sink = self.dst.open_sink(tree, self.names.tmp(uid))
        try:
            with ThreadPoolExecutor(self.connections, thread_name_prefix="tfhub-pull") as pool:
                for rel, size, chunks in self._objects(tree, manifest, pool):
                    sink.add_file(rel, size, chunks)
            written = sink.finish()
            for rel, record in sorted(manifest.items()):
                got = written.get(rel)
                if got is None or got.size != record["size"] or got.crc32c != record["crc32c"]:
                    raise ChecksumMismatchError(
                        f"{self.src.location(f'{tree}/{rel}')} does not match revision {rev}'s manifest (size "
                        f"{record['size']}, crc32c {record['crc32c']}; read {got.size if got else '?'} bytes, crc32c "
                        f"{got.crc32c if got else '?'}): the shared copy is damaged. Nothing was published; run "
                        f"`tfhub-cache verify --cache-dir {self.src.location()}` and re-stage it there."
                    )
            if not sink.commit():
                raise CacheError(f"{self.dst.location(tree)} appeared while we held the lock; retry the pull.")
        except BaseException:
            sink.abort()
            raise
        log.info(
            "Pulled revision %s of %s from %s into %s (%d files, %s in %s).",
            rev,
            self.handle.text,
            self.src.location(),
            self.dst.location(tree),
            len(manifest),
            format_bytes_si(total),
            human_duration(time.monotonic() - started),
        )

    def _objects(
        self, tree: str, manifest: dict[str, Any], pool: ThreadPoolExecutor
    ) -> Iterator[tuple[str, int, Iterator[bytes]]]:
        """``(relpath, size, chunks)`` in manifest order; small files are read ahead on ``pool``."""
        pending: deque[tuple[str, int, Future[bytes] | None]] = deque()
        ahead = 0
        items = iter(sorted(manifest.items()))
        exhausted = False

        def fill() -> None:
            nonlocal ahead, exhausted
            while not exhausted and ahead < READ_AHEAD_BYTES and len(pending) < 4 * self.connections:
                item = next(items, None)
                if item is None:
                    exhausted = True
                    return
                rel, record = item
                size = int(record["size"])
                if not self._is_big(size):
                    pending.append((rel, size, pool.submit(self._read_whole, f"{tree}/{rel}", size)))
                    ahead += size
                else:
                    pending.append((rel, size, None))
                    return  # read ahead no further than the next big file: its parts use the connections

        try:
            fill()
            while pending:
                rel, size, future = pending.popleft()
                if future is not None:
                    data = future.result()
                    ahead -= size
                    fill()
                    yield rel, size, iter((data,) if data else ())
                else:
                    yield rel, size, self._read_big(f"{tree}/{rel}", size)
                    fill()
        finally:
            for _rel, _size, left in pending:
                if left is not None:
                    left.cancel()

    def _is_big(self, size: int) -> bool:
        """Read as a stream (ranged parts on gs://) rather than whole: too big to hold, or worth splitting."""
        if size > WHOLE_READ_MAX:
            return True
        return _gcs(self.src) is not None and plan_parts(size, self.connections, settings.download_part_size()) > 0

    def _missing(self, name: str) -> CacheError:
        return CacheError(
            f"{self.src.location(name)} is missing from the shared cache, though its revision's manifest lists it: "
            f"the shared copy is damaged. Nothing was published; run `tfhub-cache verify --cache-dir "
            f"{self.src.location()}` and re-stage it there."
        )

    def _wrong_size(self, name: str, size: int, got: int) -> ChecksumMismatchError:
        return ChecksumMismatchError(
            f"{self.src.location(name)} has {got} bytes, but its revision's manifest says {size}: the shared copy "
            f"is damaged. Nothing was published; run `tfhub-cache verify --cache-dir {self.src.location()}` and "
            "re-stage it there."
        )

    def _read_whole(self, name: str, size: int) -> bytes:
        try:
            with self.src.open_read(name) as f:
                data = f.read()
        except FileNotFoundError:
            raise self._missing(name) from None
        if len(data) != size:
            raise self._wrong_size(name, size, len(data))
        return data

    def _read_big(self, name: str, size: int) -> Iterator[bytes]:
        gcs = _gcs(self.src)
        if gcs is not None:
            return self._read_gcs_ranged(gcs, name, size)
        return self._read_stream(name, size)

    def _read_stream(self, name: str, size: int) -> Iterator[bytes]:
        try:
            f = self.src.open_read(name)
        except FileNotFoundError:
            raise self._missing(name) from None
        got = 0
        with f:
            while chunk := f.read(CHUNK_SIZE):
                got += len(chunk)
                yield chunk
        if got != size:
            raise self._wrong_size(name, size, got)

    def _read_gcs_ranged(self, gcs: GCSStorage, name: str, size: int) -> Iterator[bytes]:
        """One generation of the object, as parallel ranged parts handed on in order."""
        from tfhub_cache.fetch.ranged import open_gcs_ranged

        try:
            blob = gcs.bucket.get_blob(gcs.key(name), timeout=gcs.timeout_for(), retry=gcs.retry)
        except Exception as exc:
            raise gcs.error(exc, f"reading {name}", object_level=True) from exc
        if blob is None:
            raise self._missing(name)
        if int(blob.size or 0) != size:
            raise self._wrong_size(name, size, int(blob.size or 0))
        pinned = gcs.blob(name, generation=blob.generation)
        info = SourceInfo(url=gcs.location(name), etag=str(blob.generation), size=size, accept_ranges=True)
        translate: Callable[[BaseException], BaseException] = lambda exc: gcs.error(  # noqa: E731
            exc, f"reading {name}", object_level=True
        )
        stream = open_gcs_ranged(pinned, info, self.connections, translate, expected_crc32c=None)
        if stream is None:
            return self._read_stream(name, size)
        return _closing(stream.chunks(), stream.close)


def _closing(chunks: Iterator[bytes], close: Callable[[], None]) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        close()


def _gcs(storage: Storage) -> GCSStorage | None:
    if not storage.location().startswith("gs://"):
        return None
    from tfhub_cache.storage.gcs import GCSStorage

    return storage if isinstance(storage, GCSStorage) else None
