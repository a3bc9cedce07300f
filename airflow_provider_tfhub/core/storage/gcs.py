"""A ``gs://bucket/prefix`` cache with tensorflow_hub's layout, safe for many workers on many machines.

GCS has no rename, so a tree cannot appear at once. Publishing is ordered instead:

* non-marker files stream straight to ``<prefix>/<key>/...`` while the archive is extracted;
* the model markers (``saved_model.pb``...) go to the stager's ``<key>.<uid>.tmp/`` and are copied
  into place last, on :meth:`GCSTreeSink.commit`; a tensorflow_hub reader of a half-written tree
  therefore gets a load error, never a silently partial model;
* our readers trust only ``<key>.meta.json``, which the staging flow writes after commit.

A refresh (``replace=True``) writes the whole new tree under the tmp prefix first, so a failed
refresh leaves the old model untouched; commit then deletes the old marker, copies the new tree
into place (server side), copies the new marker, and deletes old objects the new tree lacks.

Locks are objects created with ``ifGenerationMatch=0`` (exactly one creator wins), renewed by
rewriting them with ``ifGenerationMatch=<generation>``; the generation is the lock token.

Uploads never touch local disk: small files are uploaded from memory (one multipart request),
large ones streamed as one request of a resumable upload session fed by a queue (resumed from a
window of recent bytes if the connection drops), on a thread pool, with the bytes held in memory
bounded by ``max_inflight_bytes``. With ``composite_part_bytes`` set, a file of more than two parts
is instead cut into parts uploaded in parallel (one stream is limited by the server, not by us),
then composed into the final object server side (parallel composite upload).
google-cloud-storage is imported lazily, so a local cache never pays for it.

Emulator caveats (fake-gcs-server 1.54, our test backend; see "Known gaps" in ``docs/gcs_emulator.md``):
it enforces ``ifGenerationMatch`` only on multipart uploads (which lock objects always are), not on
deletes, rewrites or metadata patches; it does not check a declared CRC32C; and a metadata patch
(:meth:`GCSStorage.touch`) gives the object a new generation, where real GCS bumps only the
metageneration; and it finalises a resumable upload on a status query instead of answering 308.
Where that makes a difference the code says so.
"""

from __future__ import annotations

import base64
import collections
import datetime
import email.utils
import logging
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any, BinaryIO, NoReturn, cast

import google_crc32c

from airflow_provider_tfhub.core.errors import CacheError, ConfigurationError, DownloadError, TFHubError
from airflow_provider_tfhub.core.gcs_credentials import emulator_host, make_client, principal
from airflow_provider_tfhub.core.storage.base import MODEL_MARKERS, FileRecord, ObjectStat, Storage, TreeSink
from airflow_provider_tfhub.core.transfer import (
    CHUNK_SIZE,
    ArchiveSource,
    ArchiveStream,
    QueuedArchiveStream,
    SourceInfo,
)

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
_MAX_COMPOSE_SOURCES = 32  # GCS limit per compose request
_MAX_COMPONENTS = 1024  # GCS limit of components of one composite object
_COMPOSITE_DIR = ".composite-parts/"  # under the sink's tmp prefix, so every cleanup of tmp removes parts
_UPLOAD_ATTEMPTS = 5
#: Seconds a GCS request may go without progress (no byte sent or received) before it is abandoned.
DEFAULT_STALL_TIMEOUT = 60.0
#: Slowest rate at which GCS is expected to digest a request's payload once it has all of it
#: (checksums, replication): the wait for an answer grows by 1 s per this many bytes.
_SERVER_BYTES_PER_S = 32 * MiB
#: A request that stalled this many times is given up at once: GCS (or the path to it) is not
#: answering, and the lock should go to a stager that can reach it rather than wait out retries.
_MAX_STALLS = 2
#: A hit records "last used" at most this often per entry: GCS allows ~1 mutation/s per object.
DEFAULT_TOUCH_INTERVAL = 600.0
LAST_USED_KEY = "tfhub-last-used"
_READ_CHUNK = 8 * MiB
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


def parse_gs_url(url: str) -> tuple[str, str]:
    """Split ``gs://bucket/some/prefix`` into ``("bucket", "some/prefix")`` (prefix without slashes at the ends)."""
    if not url.startswith("gs://"):
        raise ConfigurationError(f"{url!r} is not a gs:// URL; use gs://<bucket>[/prefix].")
    bucket, _, prefix = url[len("gs://") :].partition("/")
    if not bucket:
        raise ConfigurationError(f"{url!r} names no bucket; use gs://<bucket>[/prefix].")
    return bucket, prefix.strip("/")


def _crc_b64(checksum: Any) -> str:
    return base64.b64encode(checksum.digest()).decode("ascii")


def _status(exc: BaseException) -> int | None:
    """HTTP status of a google-cloud-storage error (api_core exceptions and raw media-layer responses)."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _is_gcs_error(exc: BaseException) -> bool:
    """True for failures of the GCS client or its transport (translated); False for our own or a bug's."""
    if isinstance(exc, TFHubError):
        return False
    module = type(exc).__module__
    return module.startswith(("google.", "requests", "urllib3")) or isinstance(exc, ConnectionError | TimeoutError)


def _is_timeout(exc: BaseException) -> bool:
    """A request that got no progress within its timeout (requests, urllib3, api_core, socket)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError) or "Timeout" in type(seen).__name__:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_status(exc: BaseException, *statuses: int) -> bool:
    return _is_gcs_error(exc) and _status(exc) in statuses


class GCSStorage(Storage):
    """A cache at ``gs://bucket/prefix``; see the module docstring for the publishing protocol.

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

    atomic_publish = False

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
        if not _is_gcs_error(exc):
            return exc
        status = _status(exc)
        where = f"{what} in {self.location()}"
        if status == 404 and (not object_level or not self._bucket_exists()):
            return CacheError(
                f"GCS bucket {self.bucket_name!r} does not exist ({where}); create it "
                f"(gcloud storage buckets create gs://{self.bucket_name}) or fix cache_dir."
            )
        if status == 404:
            err = CacheError(f"An object vanished while {where} ({exc}); another stager or a cleanup removed it.")
            err.permanent = False
            return err
        if status == 403:
            who = principal(getattr(self._client, "_credentials", None) or self._credentials) or "the caller"
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
        if _is_timeout(exc):
            err = CacheError(
                f"GCS stopped answering while {what} in {self.location()} (no progress for {self.stall_timeout:.0f}s, "
                f"{type(exc).__name__}); gave up so that the lock is released and another stager can take over."
            )
        else:
            err = CacheError(f"GCS request failed {where}: {type(exc).__name__}: {exc}")
        err.permanent = False  # 5xx, 429, timeouts, connection resets: a later attempt may work
        return err

    def _bucket_exists(self) -> bool:
        try:
            for _ in self.client.list_blobs(self.bucket_name, max_results=1):
                break
            return True
        except Exception as exc:
            return not _is_status(exc, 404)

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
            if _is_status(exc, 404):
                return None
            self.fail_with(exc, f"reading {name}")

    def _read_with_generation(self, name: str) -> tuple[bytes | None, str | None]:
        """Content and generation of ``name`` from one request (a consistent pair)."""
        blob = self.blob(name)
        try:
            data = bytes(blob.download_as_bytes(timeout=self.timeout_for(), retry=self.retry))
        except Exception as exc:
            if _is_status(exc, 404):
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
            if _is_status(exc, 412):
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
            if not _is_status(exc, 412):
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
            if not _is_status(exc, 412, 404):
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
            if _is_status(exc, 404, 412):
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
            if not _is_gcs_error(exc):
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
            if _is_status(exc, 404):
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
            if not _is_status(exc, 404):
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
            if not _is_status(exc, 404):
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


# -- the tree sink ----------------------------------------------------------------------------------------


class _ByteBudget:
    """Bytes of model data in memory across the caller and the upload workers, bounded by ``limit``.

    ``acquire`` waits while others hold bytes that they will release on their own. When all that is
    held is the caller's own ``floor`` (a large upload's reservation, whose worker is waiting for
    data), the request goes through even past the limit: odd settings can slow an upload down but
    never deadlock it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, check: Callable[[], None], floor: int = 0) -> None:
        with self._cond:
            while self.used > floor and self.used + n > self.limit:
                check()
                self._cond.wait(0.5)
            check()
            self.used += n
            self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        if n <= 0:
            return
        with self._cond:
            self.used -= n
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


@dataclass(frozen=True)
class _End:
    crc32c: str
    size: int


_CANCEL = object()


class _Aborted(Exception):
    """The sink was aborted while a transfer was running; never escapes to users."""


class GCSTreeSink(TreeSink):
    """Streams a model tree into GCS; see the module docstring for the order of publication.

    The caller (the extractor's thread) reads each member and computes its CRC32C; workers upload.
    ``peak_inflight`` and ``uploaded_bytes`` are exposed for tests and benchmarks.
    """

    def __init__(self, storage: GCSStorage, final: str, tmp: str, *, replace: bool = False) -> None:
        self.storage = storage
        self.final = final
        self.tmp = tmp
        self.replace = replace
        self._final_key = storage._dir_key(final)
        self._tmp_key = storage._dir_key(tmp)
        self._budget = _ByteBudget(storage.max_inflight_bytes)
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
        return self._budget.peak

    # -- producer side ---------------------------------------------------------------------------
    def add_dir(self, relpath: str) -> None:
        """Nothing to do: GCS has no directories, a prefix exists while objects are under it.

        An empty directory of the archive (often ``assets/``) is therefore not materialised; loading
        a SavedModel does not need it. (tf.io.gfile would write a ``dir/`` placeholder object, which
        fake-gcs-server cannot even store.)
        """
        self._check()

    def add_file(self, relpath: str, size: int, chunks: Iterable[bytes]) -> None:
        self._check()
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
        self._budget.acquire(cost, self._check)
        try:
            crc = google_crc32c.Checksum()
            parts = []
            for chunk in chunks:
                crc.update(chunk)
                parts.append(chunk)
            data = b"".join(parts)
            del parts
        except BaseException:
            self._budget.release(cost)
            raise
        self._submit(self._upload_small, relpath, key, data, _crc_b64(crc), cost)

    def _add_large(self, relpath: str, key: str, size: int, chunks: Iterable[bytes]) -> None:
        # The resume window is reserved up front; queued chunks are charged until they are sent.
        reserve = self.storage.resume_window
        self._budget.acquire(reserve, self._check)
        q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._current = q
        self._submit(self._upload_large, relpath, key, size, q, reserve)
        crc = google_crc32c.Checksum()
        got = 0
        try:
            for chunk in chunks:
                self._budget.acquire(len(chunk), self._check, floor=reserve)
                crc.update(chunk)
                got += len(chunk)
                q.put(chunk)
        except BaseException:
            q.put(_CANCEL)
            raise
        finally:
            self._current = None
        q.put(_End(_crc_b64(crc), got))

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
                    self._budget.acquire(len(piece), self._check, floor=held_len)
                    crc.update(piece)
                    held.append(piece)
                    held_len += len(piece)
                    got += len(piece)
                    if held_len == part_bytes:
                        submit()
            if held_len:
                submit()
        except BaseException:
            self._budget.release(held_len)
            raise
        self._submit(self._compose_parts, relpath, key, names, parts, _End(_crc_b64(crc), got))

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._futures.append(self._pool.submit(self._guard, fn, *args))

    def _check(self) -> None:
        if self._aborted.is_set():
            raise _Aborted()
        if self._error is not None:
            raise self._error

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc
        self._budget.wake()

    # -- workers ---------------------------------------------------------------------------------
    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except _Aborted:
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
            self._budget.release(cost)

    def _upload_large(self, relpath: str, key: str, size: int, q: queue.SimpleQueue[object], reserve: int) -> None:
        upload = _StreamedUpload(self, relpath, key, size, q)
        try:
            info = upload.run()
            assert upload.end is not None
            self._record(relpath, upload.end.size, upload.end.crc32c, info.get("crc32c"), info.get("size"))
        except BaseException as exc:
            if not upload.stopped:
                if not isinstance(exc, _Aborted):
                    self._fail(self.storage.error(exc, f"uploading {relpath}", object_level=True))  # stop producer
                self._drain(q)
            raise
        finally:
            self._budget.release(reserve)

    def _upload_part(self, relpath: str, name: str, chunks: list[bytes], size: int) -> None:
        """Upload one part in a single media request (the fastest kind), re-sent whole on transient failures."""
        import requests
        from google.api_core import exceptions as api_exceptions
        from google.cloud.storage.blob import _get_host_name

        storage = self.storage
        bucket = storage.bucket
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        url = f"{_get_host_name(storage.client._connection)}/upload/storage/v1{bucket.path}/o?{query}"
        try:
            attempt = stalls = 0
            while True:
                self._check()
                failure: BaseException
                try:
                    response = storage.client._http.post(
                        url,
                        data=_ChunksBody(self, chunks, size),
                        headers={"Content-Type": "application/octet-stream"},
                        timeout=storage.timeout_for(size),
                    )
                    if response.status_code in (200, 201):
                        stored = int(response.json().get("size", -1))
                        if stored != size:
                            raise CacheError(
                                f"GCS stored {stored} bytes of a {size}-byte part of {relpath!r} ({name}); stage again."
                            )
                        return
                    failure = api_exceptions.from_http_response(response)
                    if response.status_code not in _TRANSIENT_STATUS:
                        raise failure
                except (requests.ConnectionError, requests.Timeout) as exc:
                    failure = exc
                attempt += 1
                stalls += _is_timeout(failure)
                if attempt >= _UPLOAD_ATTEMPTS or stalls >= _MAX_STALLS:
                    raise failure
                log.warning("Upload of a part of %s failed (%s); sending it again.", relpath, failure)
                time.sleep(min(0.5 * 2**attempt, 10.0))
        finally:
            chunks.clear()  # the pool keeps a task's arguments until it returns
            self._budget.release(size)

    def _compose_parts(self, relpath: str, key: str, names: list[str], parts: list[Future[None]], end: _End) -> None:
        """Compose the parts into ``key`` (in stages of 32), check the whole file's CRC32C, delete the parts.

        Runs on the pool after all the file's parts were submitted, so waiting for them cannot
        deadlock: they were dequeued before this task.
        """
        from google.cloud.storage.retry import DEFAULT_RETRY

        wait_futures(parts)
        self._check()
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
                self._check()
                # Re-running a compose of immutable parts gives the same object: retrying is safe.
                bucket.blob(dst).compose([bucket.blob(n) for n in group], retry=DEFAULT_RETRY)
            level += 1
        self._check()
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
            if item is _CANCEL or isinstance(item, _End):
                return
            self._budget.release(len(cast(bytes, item)))

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
            top = {b.name[len(self._final_key) :] for b in storage._list(self._final_key, delimiter="/")}
            present = [m for m in MODEL_MARKERS if m in top]
            if present and not replace:
                self._lost = True  # someone published meanwhile; their tree and ours have the same names
                self._cleanup_tmp()
                return False
            old: set[str] = set()
            if replace:
                old = {b.name for b in storage._list(self._final_key)}
                # Readers must never load old markers over new files: markers go first, then the files.
                self._delete([self._final_key + m for m in present])
                if self.replace:  # the new tree waits under tmp (else its files are in place already)
                    self._copy_into_place([rel for rel in manifest if rel not in MODEL_MARKERS])
            if not self._copy_markers([m for m in MODEL_MARKERS if m in manifest], create_only=not replace):
                self._lost = True
                self._cleanup_tmp()
                return False
            if replace:
                new = {self._final_key + rel for rel in manifest}
                self._delete(sorted(old - new))
        except _Aborted as exc:
            raise CacheError(f"Staging into {storage.location(self.final)} was aborted.") from exc
        except Exception as exc:
            storage.fail_with(exc, f"publishing {self.final}", object_level=True)
        self._committed = True
        self._cleanup_tmp()
        return True

    def _copy(self, src: str, dst: str, *, create_only: bool) -> bool:
        """Server-side copy (rewrite) ``src`` -> ``dst``; False when ``create_only`` and ``dst`` exists.

        fake-gcs-server ignores ifGenerationMatch on rewrite (real GCS enforces it); the marker check
        in :meth:`commit` and the lock cover that on the emulator.
        """
        from google.cloud.storage.retry import DEFAULT_RETRY

        with self._lock:
            self._written.add(dst)
        source = self.storage.bucket.blob(src)
        target = self.storage.bucket.blob(dst)
        kwargs: dict[str, Any] = {"if_generation_match": 0} if create_only else {}
        token = None
        try:
            while True:
                token, _done, _total = target.rewrite(source, token=token, retry=DEFAULT_RETRY, **kwargs)
                if token is None:
                    return True
        except Exception as exc:
            if create_only and _is_status(exc, 412):
                with self._lock:
                    self._written.discard(dst)
                return False
            raise

    def _copy_into_place(self, relpaths: list[str]) -> None:
        self._parallel([(self._tmp_key + rel, self._final_key + rel) for rel in relpaths])

    def _parallel(self, pairs: list[tuple[str, str]]) -> None:
        if not pairs:
            return
        workers = min(self.storage.max_workers, len(pairs))
        with ThreadPoolExecutor(workers, thread_name_prefix="tfhub-gcs-copy") as pool:
            futures = [pool.submit(self._copy, src, dst, create_only=False) for src, dst in pairs]
            for future in futures:
                future.result()

    def _copy_markers(self, markers: list[str], *, create_only: bool) -> bool:
        for marker in markers:
            if not self._copy(self._tmp_key + marker, self._final_key + marker, create_only=create_only):
                return False
        return True

    def _delete(self, keys: list[str]) -> None:
        self.storage.delete_keys(keys)

    def _cleanup_tmp(self) -> None:
        """Remove our tmp objects; a failure only leaves garbage the next stager removes."""
        try:
            self.storage.delete_keys(b.name for b in self.storage._list(self._tmp_key))
        except Exception as exc:
            log.warning("Could not remove %s: %s", self.storage.location(self.tmp), exc)

    def abort(self) -> None:
        self._aborted.set()
        self._budget.wake()
        current = self._current
        if current is not None:
            current.put(_CANCEL)
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
            log.warning("Could not remove the partial upload %s: %s", self.storage.location(self.final), exc)


class _CannotResume(CacheError):
    """GCS kept less of an interrupted upload than we still hold: only a new staging can send it again."""

    permanent = False


class _StreamedUpload:
    """One large file as a single request of a resumable upload session, its body fed by the producer.

    Why not the client's chunked resumable upload: each chunk is a round trip (and fake-gcs-server
    rewrites the whole partial object per chunk), so one streamed request is several times faster,
    and memory stays at the resume window. If the connection drops, GCS is asked how much it kept
    and the upload resumes from there out of the window of recent bytes we still hold; a new
    session from byte 0 when GCS cannot say (fake-gcs-server finalises the object on a status
    query, so the emulator always takes that path).
    """

    def __init__(self, sink: GCSTreeSink, relpath: str, key: str, size: int, q: queue.SimpleQueue[object]) -> None:
        self.sink = sink
        self.storage = sink.storage
        self.relpath = relpath
        self.key = key
        self.size = size
        self.q = q
        self.window: collections.deque[bytes] = collections.deque()
        self.window_start = 0  # offset of window[0]
        self.window_len = 0
        self.taken = 0  # bytes taken from the queue
        self.end: _End | None = None
        self.stopped = False  # the producer's last item (end or cancel) was received

    def run(self) -> dict[str, Any]:
        """Send the file; return the object resource GCS answered with."""
        import requests
        from google.api_core import exceptions as api_exceptions

        session = self.storage.client._http
        url = self._new_session()
        start, attempt, stalls = 0, 0, 0
        try:
            while True:
                failure: BaseException
                try:
                    response = session.put(
                        url,
                        data=_Body(self, start),
                        headers={"Content-Range": f"bytes {start}-{self.size - 1}/{self.size}"},
                        timeout=self.storage.timeout_for(self.size - start),
                    )
                    if response.status_code in (200, 201):
                        return dict(response.json())
                    failure = api_exceptions.from_http_response(response)
                    if response.status_code not in _TRANSIENT_STATUS:
                        raise failure
                except (requests.ConnectionError, requests.Timeout) as exc:
                    failure = exc
                attempt += 1
                stalls += _is_timeout(failure)
                if attempt >= _UPLOAD_ATTEMPTS or stalls >= _MAX_STALLS:
                    raise failure
                time.sleep(min(0.5 * 2**attempt, 10.0))
                log.warning("Upload of %s interrupted (%s); resuming.", self.relpath, failure)
                start, done = self._persisted(url)
                if done is not None:
                    return done
                self._check_resumable(start)
                if start == 0:
                    url = self._new_session()  # nothing kept, or GCS could not say: start over
        except BaseException:
            self._cancel(url)
            raise

    def _new_session(self) -> str:
        blob = self.storage.bucket.blob(self.key)
        return str(
            blob.create_resumable_upload_session(
                content_type="application/octet-stream",
                size=self.size,
                checksum=None,
                retry=self.storage.retry,
                timeout=self.storage.timeout_for(),
            )
        )

    def _persisted(self, url: str) -> tuple[int, dict[str, Any] | None]:
        """How much of the upload GCS kept (and the object if it completed); 0 when it cannot tell."""
        if self.storage.emulated:
            return 0, None
        try:
            response = self.storage.client._http.put(
                url, data=b"", headers={"Content-Range": f"bytes */{self.size}"}, timeout=self.storage.timeout_for()
            )
        except Exception as exc:
            log.debug("Status of the upload of %s unknown: %s", self.relpath, exc)
            return 0, None
        if response.status_code in (200, 201):
            return self.size, dict(response.json())
        if response.status_code == 308:
            kept = response.headers.get("Range", "")  # "bytes=0-<last>"
            return (int(kept.rsplit("-", 1)[1]) + 1 if "-" in kept else 0), None
        return 0, None

    def _cancel(self, url: str) -> None:
        try:
            self.storage.client._http.delete(url, timeout=self.storage.timeout_for())
        except Exception as exc:
            log.debug("Could not cancel the upload of %s: %s", self.relpath, exc)

    def _check_resumable(self, start: int) -> None:
        if start < self.window_start:
            raise _CannotResume(
                f"The upload of {self.relpath!r} to {self.storage.location()} broke off and cannot resume: GCS kept "
                f"{start} bytes, we still hold the bytes from {self.window_start} on (resume_window="
                f"{self.storage.resume_window}). Stage again (a retry of the task does), or raise resume_window."
            )

    def body(self, start: int) -> Iterator[bytes]:
        """Bytes from ``start``: first what the window still holds, then the producer's chunks.

        Each call starts over at ``start``, so a transport that re-sends the body (google-auth does
        after refreshing a token) replays it correctly or fails clearly.
        """
        self._check_resumable(start)
        offset = self.window_start
        for data in list(self.window):
            if offset + len(data) > start:
                yield data[max(0, start - offset) :]
            offset += len(data)
        while self.end is None:
            item = self.q.get()
            if item is _CANCEL:
                self.stopped = True
                raise _Aborted()
            if isinstance(item, _End):
                self.stopped = True
                self.end = item
                return
            data = cast(bytes, item)
            self.taken += len(data)
            self._retain(data)
            try:
                yield data
            finally:
                self.sink._budget.release(len(data))  # sent (or abandoned): the window covers it now

    def _retain(self, data: bytes) -> None:
        self.window.append(data)
        self.window_len += len(data)
        limit = self.storage.resume_window
        while self.window and self.window_len - len(self.window[0]) >= limit:
            dropped = self.window.popleft()
            self.window_len -= len(dropped)
            self.window_start += len(dropped)


class _Body:
    """A request body of known length that requests streams (no chunked encoding, no copy)."""

    def __init__(self, upload: _StreamedUpload, start: int) -> None:
        self.upload = upload
        self.start = start

    def __len__(self) -> int:
        return self.upload.size - self.start

    def __iter__(self) -> Iterator[bytes]:
        return self.upload.body(self.start)


class _ChunksBody:
    """A part's chunks as a request body of known length, sent without joining them; stops on abort."""

    def __init__(self, sink: GCSTreeSink, chunks: list[bytes], size: int) -> None:
        self.sink = sink
        self.chunks = chunks
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        for chunk in list(self.chunks):
            if self.sink._aborted.is_set():
                raise _Aborted()
            yield chunk


# -- gs:// archives as a model source --------------------------------------------------------------------


class GCSArchiveSource(ArchiveSource):
    """A ``gs://bucket/path/model.tar.gz`` handle, streamed with bounded memory.

    The object's generation is its ETag, so ``refresh="if_changed"`` costs one metadata request.
    """

    def __init__(
        self, handle_url: str, *, storage: Storage | None = None, client: Any = None, connections: int | None = None
    ) -> None:
        self.url = handle_url
        self.connections = connections  # parallel ranged reads (core/ranged.py); 1: one stream
        self.description = handle_url
        self.bucket_name, self.name = parse_gs_url(handle_url)
        if not self.name:
            raise ConfigurationError(f"{handle_url!r} names no object; expected gs://<bucket>/<path>.tar.gz.")
        self._client = client if client is not None else (storage.client if isinstance(storage, GCSStorage) else None)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client()
        return self._client

    def open(self, validators: dict[str, str] | None = None) -> ArchiveStream | None:
        try:
            blob = self.client.bucket(self.bucket_name).get_blob(self.name)
        except Exception as exc:
            raise self._error(exc) from exc
        if blob is None:
            raise DownloadError(
                f"Model archive {self.url!r} does not exist (or its bucket does not); check the handle.",
                permanent=True,
                status=404,
            )
        etag = str(blob.generation)
        if validators and validators.get("etag") == etag:
            return None
        updated = blob.updated
        info = SourceInfo(
            url=self.url,
            etag=etag,
            last_modified=email.utils.format_datetime(updated.astimezone(datetime.timezone.utc), usegmt=True)
            if updated is not None
            else None,
            size=int(blob.size) if blob.size is not None else None,
            content_type=blob.content_type,
            accept_ranges=True,
        )
        pinned = self.client.bucket(self.bucket_name).blob(self.name, generation=blob.generation)
        from airflow_provider_tfhub.core.ranged import connections_from, open_gcs_ranged

        crc = base64.b64decode(blob.crc32c) if blob.crc32c else None
        ranged = open_gcs_ranged(pinned, info, connections_from(self.connections), self._error, expected_crc32c=crc)
        return ranged if ranged is not None else _GCSStream(pinned, info, self._error)

    def _error(self, exc: BaseException) -> BaseException:
        if not _is_gcs_error(exc):
            return exc
        status = _status(exc)
        if status == 404:
            return DownloadError(f"Model archive {self.url!r} does not exist; check the handle.", permanent=True)
        if status in (401, 403):
            who = principal(getattr(self._client, "_credentials", None)) or "the caller"
            return DownloadError(
                f"Permission denied reading {self.url!r} for {who}: grant it storage.objects.get on "
                f"gs://{self.bucket_name}, or set gcp_conn_id in the tfhub connection.",
                permanent=True,
                status=status,
            )
        return DownloadError(
            f"Reading {self.url!r} failed: {type(exc).__name__}: {exc}.",
            permanent=status is not None and status < 500 and status not in _TRANSIENT_STATUS,
            status=status,
        )


class _StreamClosed(Exception):
    """The consumer closed the stream; stops the download thread."""


class _GCSStream(QueuedArchiveStream):
    """An object's bytes, downloaded by a thread (the client verifies CRC32C at the end)."""

    def __init__(self, blob: Any, info: SourceInfo, translate: Callable[[BaseException], BaseException]) -> None:
        super().__init__()
        self.info = info
        self._blob = blob
        self._translate = translate
        self._pending = bytearray()
        self._start(self._pump, "tfhub-gcs-download")

    # file-like target of blob.download_to_file
    def write(self, data: bytes) -> int:
        self._pending += data
        if len(self._pending) >= CHUNK_SIZE:
            if not self._put(bytes(self._pending)):
                raise _StreamClosed()
            self._pending.clear()
        return len(data)

    def _pump(self) -> None:
        from google.cloud.storage.retry import DEFAULT_RETRY

        try:
            self._blob.download_to_file(self, raw_download=True, checksum="crc32c", retry=DEFAULT_RETRY)
            if self._pending:
                self._put(bytes(self._pending))
                self._pending.clear()
            self._put(None)
        except _StreamClosed:
            return
        except BaseException as exc:
            self._put(self._translate(exc))


__all__ = ["GCSArchiveSource", "GCSStorage", "GCSTreeSink", "parse_gs_url"]
