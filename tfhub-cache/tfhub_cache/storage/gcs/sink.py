"""The tree sink: a model's files streamed into GCS while the archive is extracted, published in order."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, cast

import google_crc32c

from tfhub_cache.errors import CacheError
from tfhub_cache.storage.base import MODEL_MARKERS, FileRecord, SinkAborted, TreeSink
from tfhub_cache.storage.gcs.client_adapter import is_status
from tfhub_cache.storage.gcs.objects import GCSObjects, copy_object
from tfhub_cache.storage.gcs.upload import (
    CANCEL_UPLOAD,
    ByteBudget,
    StreamedUpload,
    UploadEnd,
    crc32c_b64,
    upload_part,
)

log = logging.getLogger(__name__)

_MAX_COMPOSE_SOURCES = 32  # GCS limit per compose request
_MAX_COMPONENTS = 1024  # GCS limit of components of one composite object
_COMPOSITE_DIR = ".composite-parts/"  # under the sink's tmp prefix, so every cleanup of tmp removes parts


class GCSTreeSink(TreeSink):
    """Streams a model tree into GCS; :mod:`tfhub_cache.storage.gcs` describes the order of publication.

    The caller (the extractor's thread) reads each member and computes its CRC32C; workers upload.
    ``peak_inflight`` and ``uploaded_bytes`` are exposed for tests and benchmarks.
    """

    def __init__(self, storage: GCSObjects, final: str, tmp: str, *, replace: bool = False) -> None:
        self.storage = storage
        self.final = final
        self.tmp = tmp
        self.replace = replace
        self._final_key = storage.dir_key(final)
        self._tmp_key = storage.dir_key(tmp)
        self.budget = ByteBudget(storage.max_inflight_bytes)
        self._pool = ThreadPoolExecutor(storage.max_workers, thread_name_prefix="tfhub-gcs-upload")
        self._futures: list[Future[None]] = []
        self._lock = threading.Lock()
        self._written: set[str] = set()  # object names we created (or may have), for abort
        self._manifest: dict[str, FileRecord] = {}
        self._error: BaseException | None = None
        self._aborted = threading.Event()
        self._current: queue.SimpleQueue[object] | None = None
        self._finished = False
        self._committed = False
        self._lost = False
        self._composites = 0  # composite uploads started, names their part directories
        self.uploaded_bytes = 0

    @property
    def peak_inflight(self) -> int:
        return self.budget.peak

    # -- producer side ---------------------------------------------------------------------------
    def add_dir(self, relpath: str) -> None:
        """Nothing to do: GCS has no directories, a prefix exists while objects are under it.

        An empty directory of the archive (often ``assets/``) is therefore not materialised; loading
        a SavedModel does not need it. (tf.io.gfile would write a ``dir/`` placeholder object, which
        fake-gcs-server cannot even store.)
        """
        self.check()

    def add_file(self, relpath: str, size: int, chunks: Iterable[bytes]) -> None:
        self.check()
        key = self._staging_key(relpath)
        with self._lock:
            self._written.add(key)
        part = self.storage.composite_part_bytes
        if size <= self.storage.small_file_max:
            self._add_small(relpath, key, size, chunks)
        elif part and 2 * part < size <= _MAX_COMPONENTS * part:
            self._add_composite(relpath, key, part, chunks)
        else:
            self._add_large(relpath, key, size, chunks)

    def _staging_key(self, relpath: str) -> str:
        """Where ``relpath`` is uploaded: under tmp for markers (and for everything on replace), else final."""
        if self.replace or relpath in MODEL_MARKERS:
            return self._tmp_key + relpath
        return self._final_key + relpath

    def _add_small(self, relpath: str, key: str, size: int, chunks: Iterable[bytes]) -> None:
        cost = 2 * size  # the data, plus the multipart body the client builds around it
        self.budget.acquire(cost, self.check)
        try:
            crc = google_crc32c.Checksum()
            parts = []
            for chunk in chunks:
                crc.update(chunk)
                parts.append(chunk)
            data = b"".join(parts)
            del parts
        except BaseException:
            self.budget.release(cost)
            raise
        self._submit(self._upload_small, relpath, key, data, crc32c_b64(crc), cost)

    def _add_large(self, relpath: str, key: str, size: int, chunks: Iterable[bytes]) -> None:
        # The resume window is reserved up front; queued chunks are charged until they are sent.
        reserve = self.storage.resume_window
        self.budget.acquire(reserve, self.check)
        q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._current = q
        self._submit(self._upload_large, relpath, key, size, q, reserve)
        crc = google_crc32c.Checksum()
        got = 0
        try:
            for chunk in chunks:
                self.budget.acquire(len(chunk), self.check, floor=reserve)
                crc.update(chunk)
                got += len(chunk)
                q.put(chunk)
        except BaseException:
            q.put(CANCEL_UPLOAD)
            raise
        finally:
            self._current = None
        q.put(UploadEnd(crc32c_b64(crc), got))

    def _add_composite(self, relpath: str, key: str, part_bytes: int, chunks: Iterable[bytes]) -> None:
        """Cut the member into parts of ``part_bytes``, each uploaded by a worker as soon as it is complete.

        A part's bytes stay charged to the budget until GCS has stored it, so a failed part is sent
        again from memory, and the producer can run ahead only by what the budget allows.
        """
        with self._lock:
            prefix = f"{self._tmp_key}{_COMPOSITE_DIR}{self._composites}/"
            self._composites += 1
        parts: list[Future[None]] = []
        names: list[str] = []
        crc = google_crc32c.Checksum()
        got = 0
        held: list[bytes] = []
        held_len = 0

        def submit() -> None:
            nonlocal held, held_len
            name = f"{prefix}{len(names):05d}"
            names.append(name)
            with self._lock:
                self._written.add(name)
            future = self._pool.submit(self._guard, self._upload_part, relpath, name, held, held_len)
            self._futures.append(future)
            parts.append(future)
            held, held_len = [], 0

        try:
            for chunk in chunks:
                while chunk:
                    take = min(len(chunk), part_bytes - held_len)
                    piece = chunk if take == len(chunk) else chunk[:take]
                    chunk = chunk[take:] if take < len(chunk) else b""
                    self.budget.acquire(len(piece), self.check, floor=held_len)
                    crc.update(piece)
                    held.append(piece)
                    held_len += len(piece)
                    got += len(piece)
                    if held_len == part_bytes:
                        submit()
            if held_len:
                submit()
        except BaseException:
            self.budget.release(held_len)
            raise
        self._submit(self._compose_parts, relpath, key, names, parts, UploadEnd(crc32c_b64(crc), got))

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._futures.append(self._pool.submit(self._guard, fn, *args))

    def check(self) -> None:
        """Raise when the sink was aborted (:class:`SinkAborted`) or an upload failed (its error)."""
        if self._aborted.is_set():
            raise SinkAborted()
        if self._error is not None:
            raise self._error

    def is_aborted(self) -> bool:
        return self._aborted.is_set()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc
        self.budget.wake()

    # -- workers ---------------------------------------------------------------------------------
    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except SinkAborted:
            pass
        except BaseException as exc:
            self._fail(self.storage.error(exc, f"uploading {args[0]}", object_level=True))

    def _record(self, relpath: str, size: int, local_crc: str, remote_crc: str | None, remote_size: Any) -> None:
        if remote_crc != local_crc or int(remote_size or 0) != size:
            raise CacheError(
                f"Upload of {relpath!r} to {self.storage.location(self.final)} was corrupted: GCS reports "
                f"{remote_size} bytes with CRC32C {remote_crc}, we sent {size} bytes with CRC32C {local_crc}."
            )
        with self._lock:
            self._manifest[relpath] = FileRecord(size=size, crc32c=remote_crc)
            self.uploaded_bytes += size

    def _upload_small(self, relpath: str, key: str, data: bytes, crc: str, cost: int) -> None:
        try:
            if self._aborted.is_set() or self._error is not None:
                return
            blob = self.storage.bucket.blob(key)
            # Declaring our CRC32C makes real GCS reject a corrupted body (fake-gcs-server does not
            # check it, but reports the CRC32C of what it stored, which _record compares).
            blob.crc32c = crc
            blob.upload_from_string(
                data,
                content_type="application/octet-stream",
                checksum=None,
                retry=self.storage.retry,
                timeout=self.storage.timeout_for(len(data)),
            )
            self._record(relpath, len(data), crc, blob.crc32c, blob.size)
        finally:
            self.budget.release(cost)

    def _upload_large(self, relpath: str, key: str, size: int, q: queue.SimpleQueue[object], reserve: int) -> None:
        upload = StreamedUpload(self, relpath, key, size, q)
        try:
            info = upload.run()
            assert upload.end is not None
            self._record(relpath, upload.end.size, upload.end.crc32c, info.get("crc32c"), info.get("size"))
        except BaseException as exc:
            if not upload.stopped:
                if not isinstance(exc, SinkAborted):
                    self._fail(self.storage.error(exc, f"uploading {relpath}", object_level=True))  # stop producer
                self._drain(q)
            raise
        finally:
            self.budget.release(reserve)

    def _upload_part(self, relpath: str, name: str, chunks: list[bytes], size: int) -> None:
        upload_part(self, relpath, name, chunks, size)

    def _compose_parts(
        self, relpath: str, key: str, names: list[str], parts: list[Future[None]], end: UploadEnd
    ) -> None:
        """Compose the parts into ``key`` (in stages of 32), check the whole file's CRC32C, delete the parts.

        Runs on the pool after all the file's parts were submitted, so waiting for them cannot
        deadlock: they were dequeued before this task.
        """
        from google.cloud.storage.retry import DEFAULT_RETRY

        wait_futures(parts)
        self.check()
        bucket = self.storage.bucket
        temporary = list(names)
        sources = names
        level = 0
        while len(sources) > _MAX_COMPOSE_SOURCES:
            groups = [sources[i : i + _MAX_COMPOSE_SOURCES] for i in range(0, len(sources), _MAX_COMPOSE_SOURCES)]
            sources = [f"{names[0].rsplit('/', 1)[0]}/c{level}-{i:05d}" for i in range(len(groups))]
            with self._lock:
                self._written.update(sources)
            temporary += sources
            for dst, group in zip(sources, groups, strict=True):
                self.check()
                # Re-running a compose of immutable parts gives the same object: retrying is safe.
                bucket.blob(dst).compose([bucket.blob(n) for n in group], retry=DEFAULT_RETRY)
            level += 1
        self.check()
        target = bucket.blob(key)
        target.content_type = "application/octet-stream"
        target.compose([bucket.blob(n) for n in sources], retry=DEFAULT_RETRY)
        # GCS keeps no MD5 for composite objects but computes their CRC32C from the parts'.
        self._record(relpath, end.size, end.crc32c, target.crc32c, target.size)
        try:
            self.storage.delete_keys(temporary)
        except Exception as exc:  # the tmp cleanup after commit or abort removes them too
            log.debug("Could not remove the parts of %s yet: %s", relpath, exc)
            return
        with self._lock:
            self._written.difference_update(temporary)

    def _drain(self, q: queue.SimpleQueue[object]) -> None:
        """Release the budget of chunks the producer still queues after a failure, until it stops."""
        while True:
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                if self._aborted.is_set():
                    return
                continue
            if item is CANCEL_UPLOAD or isinstance(item, UploadEnd):
                return
            self.budget.release(len(cast(bytes, item)))

    # -- completion ------------------------------------------------------------------------------
    def finish(self) -> dict[str, FileRecord]:
        if not self._finished:
            self._finished = True
            wait_futures(self._futures)
            self._pool.shutdown(wait=True)
        if self._aborted.is_set():
            raise CacheError(f"Staging into {self.storage.location(self.final)} was aborted.")
        if self._error is not None:
            raise self._error
        return dict(self._manifest)

    def commit(self, *, replace: bool = False) -> bool:
        manifest = self.finish()
        storage = self.storage
        try:
            top = {b.name[len(self._final_key) :] for b in storage.list_objects(self._final_key, delimiter="/")}
            present = [m for m in MODEL_MARKERS if m in top]
            if present and not replace:
                self._lost = True  # someone published meanwhile; their tree and ours have the same names
                self._cleanup_tmp()
                return False
            # The new tree waits under tmp on replace (else its files are in place already, only markers wait).
            rels = [rel for rel in manifest if self.replace or rel in MODEL_MARKERS]
            old = [b.name[len(self._final_key) :] for b in storage.list_objects(self._final_key)] if replace else []

            def copy(rel: str) -> bool:
                marker = rel in MODEL_MARKERS
                return self._copy(self._tmp_key + rel, self._final_key + rel, create_only=marker and not replace)

            keep = set(manifest) if replace else None
            if not storage.write_tree(self._final_key, rels, copy, present=old, keep=keep):
                self._lost = True
                self._cleanup_tmp()
                return False
        except SinkAborted as exc:
            raise CacheError(f"Staging into {storage.location(self.final)} was aborted.") from exc
        except Exception as exc:
            storage.fail_with(exc, f"publishing {self.final}", object_level=True)
        self._committed = True
        self._cleanup_tmp()
        return True

    def _copy(self, src: str, dst: str, *, create_only: bool) -> bool:
        """Server-side copy ``src`` -> ``dst``; False when ``create_only`` and ``dst`` exists.

        fake-gcs-server ignores ifGenerationMatch on rewrite (real GCS enforces it); the marker check
        in :meth:`commit` and the lock cover that on the emulator.
        """
        with self._lock:
            self._written.add(dst)
        conditions: dict[str, Any] = {"if_generation_match": 0} if create_only else {}
        try:
            copy_object(self.storage.bucket.blob(src), self.storage.bucket.blob(dst), **conditions)
        except Exception as exc:
            if create_only and is_status(exc, 412):
                with self._lock:
                    self._written.discard(dst)
                return False
            raise
        return True

    def _cleanup_tmp(self) -> None:
        """Remove our tmp objects; a failure only leaves garbage the next stager removes."""
        try:
            self.storage.delete_keys(b.name for b in self.storage.list_objects(self._tmp_key))
        except Exception as exc:
            log.warning("Could not remove %s (%s)", self.storage.location(self.tmp), exc)

    def abort(self) -> None:
        self._aborted.set()
        self.budget.wake()
        current = self._current
        if current is not None:
            current.put(CANCEL_UPLOAD)
        if not self._finished:
            self._finished = True
            wait_futures(self._futures)
            self._pool.shutdown(wait=True)
        if self._committed:
            return
        with self._lock:
            written = sorted(self._written)
        if self._lost:
            # The final names are shared with the tree that won: remove only our private objects.
            written = [k for k in written if k.startswith(self._tmp_key)]
        try:
            self.storage.delete_keys(written)
            self._cleanup_tmp()
        except Exception as exc:
            log.warning("Could not remove the partial upload %s (%s)", self.storage.location(self.final), exc)
