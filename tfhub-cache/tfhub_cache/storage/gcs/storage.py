"""The ``gs://`` cache: small objects, conditional writes (locks), listing, deletes and server-side copies."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, NoReturn, cast

from tfhub_cache.errors import CacheError, ConfigurationError
from tfhub_cache.storage.base import MODEL_MARKERS, ObjectStat, Storage, TreeSink
from tfhub_cache.storage.gcs._client import (
    client_credentials,
    is_gcs_error,
    is_status,
    is_timeout,
    status_of,
)
from tfhub_cache.storage.gcs.credentials import emulator_host, make_client, principal
from tfhub_cache.storage.gcs.sink import GCSTreeSink

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_MAX_WORKERS = 8
DEFAULT_MAX_INFLIGHT_BYTES = 40 * MiB
#: Files up to this size are uploaded from memory in one (multipart) request.
DEFAULT_SMALL_FILE_MAX = 8 * MiB
_MAX_MULTIPART = 8 * MiB  # google-cloud-storage switches to resumable uploads above this
#: The most recent bytes of a streamed upload kept to resume it after a dropped connection.
DEFAULT_RESUME_WINDOW = 16 * MiB
#: Part size of parallel composite uploads when ``max_inflight_bytes`` holds two such parts.
DEFAULT_COMPOSITE_PART_BYTES = 16 * MiB
#: Seconds a GCS request may go without progress (no byte sent or received) before it is abandoned.
DEFAULT_STALL_TIMEOUT = 60.0
#: Slowest rate at which GCS is expected to digest a request's payload once it has all of it
#: (checksums, replication): the wait for an answer grows by 1 s per this many bytes.
_SERVER_BYTES_PER_S = 32 * MiB
#: A hit records "last used" at most this often per entry: GCS allows ~1 mutation/s per object.
DEFAULT_TOUCH_INTERVAL = 600.0
LAST_USED_KEY = "tfhub-last-used"
_READ_CHUNK = 8 * MiB


def parse_gs_url(url: str) -> tuple[str, str]:
    """Split ``gs://bucket/some/prefix`` into ``("bucket", "some/prefix")`` (prefix without slashes at the ends)."""
    if not url.startswith("gs://"):
        raise ConfigurationError(f"{url!r} is not a gs:// URL; use gs://<bucket>[/prefix].")
    bucket, _, prefix = url[len("gs://") :].partition("/")
    if not bucket:
        raise ConfigurationError(f"{url!r} names no bucket; use gs://<bucket>[/prefix].")
    return bucket, prefix.strip("/")


class GCSStorage(Storage):
    """A cache at ``gs://bucket/prefix``; see the package docstring (:mod:`tfhub_cache.storage.gcs`) for the protocol.

    :param cache_dir: ``gs://bucket[/prefix]``.
    :param client: a ready ``google.cloud.storage.Client``; built lazily from ``credentials`` and
        ``project`` (Application Default Credentials when None) otherwise. With
        ``STORAGE_EMULATOR_HOST`` set, the emulator is used with anonymous credentials.
    :param max_workers: parallel uploads (and deletes) per staging.
    :param max_inflight_bytes: model bytes held in memory while uploading, across all workers. A
        staging process peaks at about 85 MB (runtime, client and decompressor) plus about this
        much, whatever the model's size.
    :param small_file_max: files up to this size (at most 8 MiB) are uploaded from memory in one
        request; larger ones are streamed, each in one request of a resumable upload session.
    :param resume_window: the most recent bytes of a streamed upload kept to resume it after a
        dropped connection (part of ``max_inflight_bytes``).
    :param composite_part_bytes: files larger than two such parts (and of at most 1024 parts) are
        uploaded as parts in parallel (each held in memory until stored, so a failed part is re-sent
        whole) and composed server side; 0 disables it. At most half of ``max_inflight_bytes``:
        parallelism is about ``max_inflight_bytes / composite_part_bytes``. Default: 16 MiB when
        ``max_inflight_bytes`` holds two such parts, else off. The composed objects have a CRC32C but
        no MD5 (GCS computes none for composite objects); turn it off for buckets whose storage class
        charges early deletion of the parts (Nearline, Coldline, Archive) or whose retention policy
        forbids deleting them.
    :param touch_interval: minimum seconds between two "last used" updates of one object.
    :param stall_timeout: seconds a request may make no progress before it is abandoned (and
        retried a bounded number of times); every request's timeout is sized from it and its
        payload (:meth:`timeout_for`), so a stalled GCS connection holds a stager (and its lock)
        for a bounded time, never the 600 s of a fixed upload timeout.
    """

    def __init__(
        self,
        cache_dir: str,
        *,
        client: Any = None,
        credentials: Any = None,
        project: str | None = None,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
        small_file_max: int = DEFAULT_SMALL_FILE_MAX,
        resume_window: int = DEFAULT_RESUME_WINDOW,
        composite_part_bytes: int | None = None,
        touch_interval: float = DEFAULT_TOUCH_INTERVAL,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    ) -> None:
        bucket, prefix = parse_gs_url(cache_dir)
        super().__init__(f"gs://{bucket}/{prefix}" if prefix else f"gs://{bucket}")
        if int(max_workers) < 1:
            raise ConfigurationError(f"max_workers={max_workers!r} must be at least 1.")
        if not 0 < int(small_file_max) <= _MAX_MULTIPART:
            raise ConfigurationError(f"small_file_max={small_file_max!r} must be between 1 and {_MAX_MULTIPART} bytes.")
        if int(resume_window) < 0 or int(max_inflight_bytes) < max(int(resume_window), 2 * int(small_file_max)):
            raise ConfigurationError(
                f"max_inflight_bytes={max_inflight_bytes!r} must hold the resume window ({resume_window!r}) and "
                f"twice small_file_max ({small_file_max!r}): an in-memory upload holds its file and its request."
            )
        if composite_part_bytes is None:
            fits = 2 * DEFAULT_COMPOSITE_PART_BYTES <= int(max_inflight_bytes)
            composite_part_bytes = DEFAULT_COMPOSITE_PART_BYTES if fits else 0
        if int(composite_part_bytes) < 0 or 2 * int(composite_part_bytes) > int(max_inflight_bytes):
            raise ConfigurationError(
                f"composite_part_bytes={composite_part_bytes!r} must be 0 (off) or at most half of "
                f"max_inflight_bytes ({max_inflight_bytes!r}): parts are uploaded from memory, several at once."
            )
        self.bucket_name = bucket
        self.prefix = prefix
        self.max_workers = int(max_workers)
        self.max_inflight_bytes = int(max_inflight_bytes)
        self.small_file_max = int(small_file_max)
        self.resume_window = int(resume_window)
        self.composite_part_bytes = int(composite_part_bytes)
        self.touch_interval = float(touch_interval)
        if float(stall_timeout) <= 0:
            raise ConfigurationError(f"stall_timeout={stall_timeout!r} must be a positive number of seconds.")
        self.stall_timeout = float(stall_timeout)
        self._client = client
        self._credentials = credentials
        self._project = project
        self._client_lock = threading.Lock()
        self._bucket: Any = None

    # -- request limits ----------------------------------------------------------------------------
    def timeout_for(self, payload_bytes: int = 0) -> tuple[float, float]:
        """``(connect, read)`` seconds for a request carrying ``payload_bytes``.

        The read timeout bounds every wait on the socket (each send of the body and the wait for
        the answer): ``stall_timeout`` plus 1 s per :data:`_SERVER_BYTES_PER_S` of payload, the time
        GCS may need to digest a large body before it answers.
        """
        return (min(15.0, self.stall_timeout), self.stall_timeout + max(0, payload_bytes) / _SERVER_BYTES_PER_S)

    @property
    def retry(self) -> Any:
        """The client's default retry, with its total time bounded by the stall timeout."""
        from google.cloud.storage.retry import DEFAULT_RETRY

        return DEFAULT_RETRY.with_timeout(min(120.0, 3 * self.stall_timeout))

    # -- client ----------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The google-cloud-storage client, built on first use (so constructing a storage never does I/O)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = make_client(self._credentials, self._project, pool_size=self.max_workers + 8)
        return self._client

    @property
    def bucket(self) -> Any:
        if self._bucket is None:
            self._bucket = self.client.bucket(self.bucket_name)
        return self._bucket

    @property
    def emulated(self) -> bool:
        """True when talking to an emulator (``STORAGE_EMULATOR_HOST``, or a plain-http endpoint)."""
        if emulator_host() is not None:
            return True
        endpoint = str(getattr(self.client, "api_endpoint", "") or "https://")
        return not endpoint.startswith("https://")

    def key(self, name: str) -> str:
        """The object name of ``name`` (relative to the cache root)."""
        name = name.lstrip("/")  # a trailing slash is kept: "dir/" names a directory placeholder object
        if not self.prefix:
            return name
        return f"{self.prefix}/{name}" if name else self.prefix

    def _dir_key(self, name: str) -> str:
        key = self.key(name.rstrip("/"))
        return f"{key}/" if key else ""

    def blob(self, name: str, generation: int | None = None) -> Any:
        return self.bucket.blob(self.key(name), generation=generation)

    # -- errors ----------------------------------------------------------------------------------
    def error(self, exc: BaseException, what: str, *, object_level: bool = False) -> BaseException:
        """Translate a client failure ``exc`` while doing ``what`` into a clear :class:`CacheError`.

        Missing bucket, permission denied and rejected credentials are permanent (retrying cannot
        help and the client does not retry them); anything else is marked transient. A 404 of a
        bucket-level request (listing, upload) means the bucket is missing; with ``object_level``
        (copying or finishing an object) the bucket is checked before saying so.
        """
        if not is_gcs_error(exc):
            return exc
        status = status_of(exc)
        where = f"{what} in {self.location()}"
        if status == 404 and (not object_level or not self._bucket_exists()):
            return CacheError(
                f"GCS bucket {self.bucket_name!r} does not exist ({where}); create it "
                f"(gcloud storage buckets create gs://{self.bucket_name}) or fix cache_dir."
            )
        if status == 404:
            return CacheError(
                f"An object vanished while {where} ({exc}); another stager or a cleanup removed it.", permanent=False
            )
        if status == 403:
            who = principal(client_credentials(self._client) or self._credentials) or "the caller"
            return CacheError(
                f"Permission denied {where} for {who}: grant it storage.objects.create/get/list/delete/update "
                f"on gs://{self.bucket_name} (e.g. roles/storage.objectUser), or use another cache_dir or "
                "gcp_conn_id."
            )
        if status == 401 or type(exc).__name__ in ("RefreshError", "DefaultCredentialsError"):
            return CacheError(
                f"GCS rejected the credentials {where} ({exc}); fix the tfhub connection's gcp_conn_id or the "
                "Application Default Credentials."
            )
        # 5xx, 429, timeouts, connection resets: a later attempt may work
        if is_timeout(exc):
            return CacheError(
                f"GCS stopped answering while {what} in {self.location()} (no progress for {self.stall_timeout:.0f}s, "
                f"{type(exc).__name__}); gave up so that the lock is released and another stager can take over.",
                permanent=False,
            )
        return CacheError(f"GCS request failed {where}: {type(exc).__name__}: {exc}", permanent=False)

    def _bucket_exists(self) -> bool:
        try:
            for _ in self.client.list_blobs(self.bucket_name, max_results=1):
                break
            return True
        except Exception as exc:
            return not is_status(exc, 404)

    def fail_with(self, exc: BaseException, what: str, *, object_level: bool = False) -> NoReturn:
        """Raise :meth:`error` of ``exc`` (``exc`` itself when it is not a GCS failure)."""
        translated = self.error(exc, what, object_level=object_level)
        if translated is exc:
            raise exc
        raise translated from exc

    # -- names -----------------------------------------------------------------------------------
    def location(self, name: str = "") -> str:
        key = self.key(name)
        return f"gs://{self.bucket_name}/{key}" if key else f"gs://{self.bucket_name}"

    def ensure_root(self) -> None:
        """Check that the bucket exists and we may list it (a prefix needs no creation on GCS)."""
        try:
            it = self.client.list_blobs(self.bucket_name, prefix=self._dir_key(""), max_results=1)
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

    def _list(self, prefix: str, **kwargs: Any) -> Iterator[Any]:
        """Blobs under the object-name ``prefix``; a missing bucket lists as empty, like a missing local root."""
        try:
            yield from self.client.list_blobs(
                self.bucket_name, prefix=prefix, timeout=self.timeout_for(), retry=self.retry, **kwargs
            )
        except Exception as exc:
            if is_status(exc, 404):
                return
            self.fail_with(exc, f"listing {prefix or '/'}")

    def tree_is_nonempty(self, name: str) -> bool:
        return any(True for _ in self._list(self._dir_key(name), max_results=1))

    def list_tree(self, name: str) -> Iterator[tuple[str, int]]:
        prefix = self._dir_key(name)
        for blob in self._list(prefix):
            rel = blob.name[len(prefix) :]
            if rel and not rel.endswith("/"):  # "dir/" objects are directory placeholders, not files
                yield rel, int(blob.size or 0)

    def delete_tree(self, name: str) -> int:
        prefix = self._dir_key(name)
        victims = {blob.name: int(blob.size or 0) for blob in self._list(prefix)}
        single = self._get(name)
        if single is not None:
            victims[single.name] = int(single.size or 0)
        if not victims:
            return 0
        self.delete_keys(list(victims))
        return sum(size for key, size in victims.items() if not key.endswith("/"))

    def delete_keys(self, keys: Iterable[str]) -> None:
        """Delete objects by full object name, in parallel; missing ones are fine."""
        keys = list(keys)
        if not keys:
            return
        if len(keys) == 1:
            self._delete_key(keys[0])
            return
        with ThreadPoolExecutor(min(self.max_workers, len(keys)), thread_name_prefix="tfhub-gcs-delete") as pool:
            for future in [pool.submit(self._delete_key, key) for key in keys]:
                future.result()

    def _delete_key(self, key: str) -> None:
        try:
            self.bucket.blob(key).delete(timeout=self.timeout_for(), retry=self.retry)
        except Exception as exc:
            if not is_status(exc, 404):
                self.fail_with(exc, f"deleting {key}")

    def list_root(self, prefix: str = "") -> list[str]:
        base = self._dir_key("")
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
        source = self._dir_key(src)
        rels = [b.name[len(source) :] for b in self._list(source) if not b.name.endswith("/")]
        self._sync_tree(src, dst, rels, old={})

    def publish_view(self, view: str, revision: str, tmp: str) -> None:
        """Make the objects under ``view`` equal those of ``revision`` (only changed files are copied)."""
        source, target = self._dir_key(revision), self._dir_key(view)
        new = {b.name[len(source) :]: (int(b.size or 0), b.crc32c) for b in self._list(source)}
        old = {b.name[len(target) :]: (int(b.size or 0), b.crc32c) for b in self._list(target)}
        changed = [rel for rel, sig in new.items() if rel and not rel.endswith("/") and old.get(rel) != sig]
        self._sync_tree(revision, view, changed, old=old, keep=set(new))

    def _sync_tree(
        self, src: str, dst: str, rels: list[str], *, old: dict[str, Any], keep: set[str] | None = None
    ) -> None:
        """Copy ``rels`` from ``src`` to ``dst``: old markers off first, files, stale objects off, markers last.

        The order is what a tensorflow_hub reader of ``dst`` relies on: while it runs, ``dst`` has no
        model marker (a load fails cleanly) rather than an old marker over new variables.
        """
        source, target = self._dir_key(src), self._dir_key(dst)
        markers = [m for m in MODEL_MARKERS if m in rels]
        try:
            self.delete_keys([target + m for m in MODEL_MARKERS if m in old])
            self._copy_all([(source + rel, target + rel) for rel in rels if rel not in MODEL_MARKERS])
            if keep is not None:
                self.delete_keys([target + rel for rel in old if rel not in keep])
            self._copy_all([(source + m, target + m) for m in markers])
        except Exception as exc:
            self.fail_with(exc, f"copying {src} to {dst}", object_level=True)

    def _copy_all(self, pairs: list[tuple[str, str]]) -> None:
        if not pairs:
            return
        with ThreadPoolExecutor(min(self.max_workers, len(pairs)), thread_name_prefix="tfhub-gcs-copy") as pool:
            for future in [pool.submit(self._rewrite, src, dst) for src, dst in pairs]:
                future.result()

    def _rewrite(self, src: str, dst: str) -> None:
        from google.cloud.storage.retry import DEFAULT_RETRY

        source, target = self.bucket.blob(src), self.bucket.blob(dst)
        token = None
        while True:
            token, _done, _total = target.rewrite(source, token=token, retry=DEFAULT_RETRY)
            if token is None:
                return


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
