"""The ``gs://`` cache: small objects, conditional writes (locks), listing, deletes and server-side copies."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any, BinaryIO, cast

from tfhub_cache.errors import TFHubError
from tfhub_cache.storage.base import MODEL_MARKERS, ObjectStat, Storage, TreeSink
from tfhub_cache.storage.gcs.client_adapter import (
    is_gcs_error,
    is_status,
)
from tfhub_cache.storage.gcs.objects import LAST_USED_KEY, GCSObjects, copy_object
from tfhub_cache.storage.gcs.sink import GCSTreeSink
from tfhub_cache.storage.local import LocalStorage

log = logging.getLogger(__name__)

#: Bytes per ranged read of :meth:`GCSStorage.open_read`.
_READ_CHUNK = 8 * 1024 * 1024


class GCSStorage(GCSObjects, Storage):
    """A cache at ``gs://bucket/prefix``; see the package docstring (``tfhub_cache.storage.gcs``) for the protocol.

    Built like :class:`~tfhub_cache.storage.gcs.objects.GCSObjects`, whose parameters (client,
    credentials, workers, memory budget, upload sizes, stall timeout) it takes.
    """

    # -- names -----------------------------------------------------------------------------------
    def ensure_root(self) -> None:
        """Check that the bucket exists and we may list it (a prefix needs no creation on GCS)."""
        try:
            it = self.client.list_blobs(self.bucket_name, prefix=self.dir_key(""), max_results=1)
            for _ in it:
                break
        except Exception as exc:
            self.fail_with(exc, "checking the cache")

    # -- small objects -----------------------------------------------------------------------------
    def read_bytes(self, name: str) -> bytes | None:
        try:
            return bytes(self.blob(name).download_as_bytes(timeout=self.timeout_for(), retry=self.retry))
        except Exception as exc:
            if is_status(exc, 404):
                return None
            self.fail_with(exc, f"reading {name}")

    def _read_with_generation(self, name: str) -> tuple[bytes | None, str | None]:
        """Content and generation of ``name`` from one request (a consistent pair)."""
        blob = self.blob(name)
        try:
            data = bytes(blob.download_as_bytes(timeout=self.timeout_for(), retry=self.retry))
        except Exception as exc:
            if is_status(exc, 404):
                return None, None
            self.fail_with(exc, f"reading {name}")
        return data, str(blob.generation) if blob.generation is not None else None

    def write_bytes(self, name: str, data: bytes) -> None:
        try:
            # One upload is atomic on GCS: readers see the old or the new object, never a part.
            self.blob(name).upload_from_string(
                data, content_type=_content_type(name), retry=self.retry, timeout=self.timeout_for(len(data))
            )
        except Exception as exc:
            self.fail_with(exc, f"writing {name}")

    def write_bytes_if(self, name: str, data: bytes, *, token: str | None) -> str | None:
        """One conditional upload (``ifGenerationMatch``; 0 = must not exist): GCS's compare-and-swap."""
        blob = self.blob(name)
        try:
            blob.upload_from_string(
                data, content_type=_content_type(name), if_generation_match=int(token) if token else 0
            )
        except Exception as exc:
            if is_status(exc, 412):
                return None
            self.fail_with(exc, f"writing {name}")
        return str(blob.generation)

    def create_exclusive(self, name: str, data: bytes) -> str | None:
        blob = self.blob(name)
        try:
            # Conditional writes are idempotent, so the client's retry applies; ours bounds its total time.
            blob.upload_from_string(
                data, content_type="text/plain", if_generation_match=0, timeout=self.timeout_for(), retry=self.retry
            )
        except Exception as exc:
            if not is_status(exc, 412):
                self.fail_with(exc, f"creating {name}")
            # The client retries conditional uploads; if an earlier attempt of ours went through but its
            # answer was lost, the object holds our (unique) content: then it is ours.
            current, generation = self._read_with_generation(name)
            return generation if current == data else None
        return str(blob.generation)

    def refresh_lease(self, name: str, token: str, data: bytes) -> str | None:
        blob = self.blob(name)
        try:
            blob.upload_from_string(
                data,
                content_type="text/plain",
                if_generation_match=int(token),
                timeout=self.timeout_for(),
                retry=self.retry,
            )
        except Exception as exc:
            if not is_status(exc, 412, 404):
                self.fail_with(exc, f"renewing {name}")
            current, generation = self._read_with_generation(name)
            return generation if current == data else None
        return str(blob.generation)

    def delete(self, name: str, *, token: str | None = None) -> bool:
        kwargs: dict[str, Any] = {}
        if token is not None:
            kwargs["if_generation_match"] = int(token)
            if self.emulated:
                # fake-gcs-server ignores ifGenerationMatch on delete (real GCS enforces it): compare the
                # generation first so that a stale-lock takeover race is at least narrow on the emulator.
                current = self.stat(name)
                if current is None or current.token != token:
                    return False
        try:
            self.blob(name).delete(timeout=self.timeout_for(), **kwargs)
            return True
        except Exception as exc:
            if is_status(exc, 404, 412):
                return False
            self.fail_with(exc, f"deleting {name}")

    def _get(self, name: str) -> Any:
        try:
            return self.bucket.get_blob(self.key(name), timeout=self.timeout_for(), retry=self.retry)
        except Exception as exc:
            self.fail_with(exc, f"reading {name}")

    def stat(self, name: str) -> ObjectStat | None:
        blob = self._get(name)
        if blob is None:
            return None
        return ObjectStat(size=int(blob.size or 0), mtime=_mtime(blob), token=str(blob.generation))

    def touch(self, name: str) -> None:
        """Record use in custom metadata ``tfhub-last-used`` (best effort; at most every ``touch_interval``)."""
        try:
            blob = self.bucket.get_blob(self.key(name))
            if blob is None or time.time() - _mtime(blob) < self.touch_interval:
                return
            blob.metadata = {LAST_USED_KEY: f"{time.time():.3f}"}
            blob.patch()
        except Exception as exc:  # read-only shared caches and mutation rate limits must not fail a hit
            if not is_gcs_error(exc):
                raise
            log.debug("Could not record use of %s: %s", self.location(name), exc)

    def open_read(self, name: str) -> BinaryIO:
        from google.cloud.storage.fileio import BlobReader

        blob = self._get(name)
        if blob is None:
            raise FileNotFoundError(f"{self.location(name)} does not exist")
        # The blob carries its generation, so every ranged read sees the same version of the object.
        return cast(BinaryIO, BlobReader(blob, chunk_size=_READ_CHUNK))

    # -- trees -----------------------------------------------------------------------------------
    def has_file(self, name: str) -> bool:
        try:
            return bool(self.blob(name).exists(timeout=self.timeout_for(), retry=self.retry))
        except Exception as exc:
            self.fail_with(exc, f"checking {name}")

    def tree_is_nonempty(self, name: str) -> bool:
        return any(True for _ in self.list_objects(self.dir_key(name), max_results=1))

    def list_tree(self, name: str) -> Iterator[tuple[str, int]]:
        prefix = self.dir_key(name)
        for blob in self.list_objects(prefix):
            rel = blob.name[len(prefix) :]
            if rel and not rel.endswith("/"):  # "dir/" objects are directory placeholders, not files
                yield rel, int(blob.size or 0)

    def delete_tree(self, name: str, *, tmp: str | None = None) -> int:
        """Delete the objects under ``name`` (and an object of that name), its model markers first."""
        prefix = self.dir_key(name)
        victims = {blob.name: int(blob.size or 0) for blob in self.list_objects(prefix)}
        single = self._get(name)
        if single is not None:
            victims[single.name] = int(single.size or 0)
        if not victims:
            return 0
        self.delete_tree_keys(prefix, victims)
        return sum(size for key, size in victims.items() if not key.endswith("/"))

    def list_root(self, prefix: str = "") -> list[str]:
        base = self.dir_key("")
        names: set[str] = set()
        try:
            it = self.client.list_blobs(self.bucket_name, prefix=base + prefix, delimiter="/")
            for page in it.pages:
                names.update(blob.name[len(base) :] for blob in page)
                names.update(p[len(base) :].rstrip("/") for p in page.prefixes)
        except Exception as exc:
            if not is_status(exc, 404):
                self.fail_with(exc, "listing the cache")
        names.discard("")
        return sorted(names)

    def open_sink(self, final: str, tmp: str, *, replace: bool = False) -> TreeSink:
        return GCSTreeSink(self, final, tmp, replace=replace)

    def clone_tree(self, src: str, dst: str, tmp: str) -> None:
        """Server-side copies of every object of ``src`` under ``dst``, model markers last."""
        source = self.dir_key(src)
        rels = [b.name[len(source) :] for b in self.list_objects(source) if not b.name.endswith("/")]
        self._sync_tree(src, dst, rels, old={})

    def publish_view(self, view: str, revision: str, tmp: str) -> None:
        """Make the objects under ``view`` equal those of ``revision`` (only changed files are copied).

        The markers are taken off first whenever anything changes, so they are copied back last
        even when the revision's markers equal the view's.
        """
        source, target = self.dir_key(revision), self.dir_key(view)
        new = {b.name[len(source) :]: (int(b.size or 0), b.crc32c) for b in self.list_objects(source)}
        old = {b.name[len(target) :]: (int(b.size or 0), b.crc32c) for b in self.list_objects(target)}
        changed = [rel for rel, sig in new.items() if rel and not rel.endswith("/") and old.get(rel) != sig]
        if not changed and set(old) <= set(new):
            return
        changed += [m for m in MODEL_MARKERS if m in new and m not in changed]
        self._sync_tree(revision, view, changed, old=old, keep=set(new))

    def _sync_tree(
        self, src: str, dst: str, rels: list[str], *, old: Collection[str], keep: set[str] | None = None
    ) -> None:
        """Copy ``rels`` from ``src`` to ``dst`` with :meth:`write_tree` (model markers last)."""
        source, target = self.dir_key(src), self.dir_key(dst)

        def copy(rel: str) -> None:
            copy_object(self.bucket.blob(source + rel), self.bucket.blob(target + rel))

        try:
            self.write_tree(target, rels, copy, present=old, keep=keep)
        except Exception as exc:
            self.fail_with(exc, f"copying {src} to {dst}", object_level=True)

    def publish_tree(
        self, name: str, tmp: str, source: Storage, rels: Sequence[str], *, replaced: str | None = None
    ) -> None:
        """Write ``rels`` of ``source`` under ``name`` with :meth:`write_tree`: old markers off, files, stale
        objects off, markers last (``tmp`` and ``replaced`` are not needed: GCS publishes in place, in that order).

        Server-side copies when ``source`` is on GCS too, uploads otherwise (from the file when local).
        """
        target = self.dir_key(name)
        present = [rel for rel, _size in self.list_tree(name)]

        def write(rel: str) -> None:
            blob = self.bucket.blob(target + rel)
            if isinstance(source, GCSObjects):
                copy_object(source.bucket.blob(source.key(rel)), blob)
            elif isinstance(source, LocalStorage):
                blob.upload_from_filename(source.location(rel), retry=self.retry)
            else:
                with source.open_read(rel) as f:
                    blob.upload_from_file(f, retry=self.retry)

        try:
            self.write_tree(target, list(rels), write, present=present, keep=set(rels))
        except TFHubError:
            raise
        except Exception as exc:
            self.fail_with(exc, f"publishing {name}", object_level=True)


def _mtime(blob: Any) -> float:
    """Modification time for LRU and lease ages: ``updated``, or a later ``tfhub-last-used`` from touch."""
    mtime = blob.updated.timestamp() if blob.updated is not None else 0.0
    try:
        used = float((blob.metadata or {}).get(LAST_USED_KEY, 0.0))
    except (TypeError, ValueError):
        used = 0.0
    return max(mtime, used)


def _content_type(name: str) -> str:
    if name.endswith(".json"):
        return "application/json"
    if name.endswith((".txt", ".lock")):
        return "text/plain"
    return "application/octet-stream"
