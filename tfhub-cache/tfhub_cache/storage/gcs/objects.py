"""The objects under a ``gs://bucket/prefix``: client, names, error translation, listing, deletes, copies.

The layer below the cache backend (:mod:`.storage`), its tree sink (:mod:`.sink`) and the uploads
(:mod:`.upload`). It also holds the two GCS rules those write by: a server-side copy is a loop of
rewrite calls (:func:`copy_object`), and a tree is written with its model markers last
(:meth:`GCSObjects.write_tree`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

from tfhub_cache.errors import CacheError, ConfigurationError
from tfhub_cache.locations import parse_gs_url
from tfhub_cache.storage.base import MODEL_MARKERS
from tfhub_cache.storage.gcs.client_adapter import client_credentials, is_gcs_error, is_status, is_timeout, status_of
from tfhub_cache.storage.gcs.credentials import emulator_host, make_client, principal

_Item = TypeVar("_Item")

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


class GCSObjects:
    """The objects under ``gs://bucket/prefix``: the client, object names, errors, listing, deletes and copies.

    What the cache backend (:class:`~tfhub_cache.storage.gcs.storage.GCSStorage`), its tree sink and
    the uploads share; kept below all three so that none of them imports another to reach it.

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
        #: ``gs://bucket[/prefix]``, normalised (the root of the cache built on these objects).
        self.root = f"gs://{bucket}/{prefix}" if prefix else f"gs://{bucket}"
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

    def dir_key(self, name: str) -> str:
        """The object-name prefix of the directory ``name``: its key and a slash ("" for the root)."""
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

    def list_objects(self, prefix: str, **kwargs: Any) -> Iterator[Any]:
        """Blobs under the object-name ``prefix``; a missing bucket lists as empty, like a missing local root."""
        try:
            yield from self.client.list_blobs(
                self.bucket_name, prefix=prefix, timeout=self.timeout_for(), retry=self.retry, **kwargs
            )
        except Exception as exc:
            if is_status(exc, 404):
                return
            self.fail_with(exc, f"listing {prefix or '/'}")

    def delete_keys(self, keys: Iterable[str]) -> None:
        """Delete objects by full object name, in parallel; missing ones are fine."""
        self.run_parallel(self._delete_key, list(keys), name="tfhub-gcs-delete")

    def _delete_key(self, key: str) -> None:
        try:
            self.bucket.blob(key).delete(timeout=self.timeout_for(), retry=self.retry)
        except Exception as exc:
            if not is_status(exc, 404):
                self.fail_with(exc, f"deleting {key}")

    def write_tree(
        self,
        target: str,
        rels: Sequence[str],
        write: Callable[[str], bool | None],
        *,
        present: Collection[str] = (),
        keep: Collection[str] | None = None,
    ) -> bool:
        """Write the files ``rels`` under the object prefix ``target`` with ``write(rel)``, model markers last.

        GCS has no rename, so this order is what stands in for one: markers already ``present`` go
        first, then the other files are written (in parallel), then objects of ``present`` not in
        ``keep`` are deleted (when ``keep`` is given), and the markers come last, one by one. A
        tensorflow_hub reader or a TF Serving poller of ``target`` meanwhile finds no marker and fails
        that load cleanly, never an old marker over new files or a marker over a partial tree.
        ``write`` returning False (a marker someone else created first) stops and returns False.
        """
        self.delete_keys([target + m for m in MODEL_MARKERS if m in present])
        self.run_parallel(write, [rel for rel in rels if rel not in MODEL_MARKERS])
        if keep is not None:
            self.delete_keys([target + rel for rel in present if rel not in keep])
        return all(write(m) is not False for m in MODEL_MARKERS if m in rels)

    def delete_tree_keys(self, target: str, keys: Iterable[str]) -> None:
        """Delete ``keys`` (full object names), the model markers directly under ``target`` first.

        The reverse of :meth:`write_tree`: a reader never finds a marker over a tree whose files are going.
        """
        keys = list(keys)
        markers = {target + m for m in MODEL_MARKERS}
        self.delete_keys([k for k in keys if k in markers])
        self.delete_keys([k for k in keys if k not in markers])

    def run_parallel(self, fn: Callable[[_Item], Any], items: Sequence[_Item], *, name: str = "tfhub-gcs-copy") -> None:
        """``fn`` of every item on up to ``max_workers`` threads named ``name``; the first failure is raised."""
        if not items:
            return
        if len(items) == 1:
            fn(items[0])
            return
        with ThreadPoolExecutor(min(self.max_workers, len(items)), thread_name_prefix=name) as pool:
            for future in [pool.submit(fn, item) for item in items]:
                future.result()


def copy_object(source: Any, target: Any, **conditions: Any) -> None:
    """Server-side copy of blob ``source`` to blob ``target`` (any buckets): rewrite until GCS says done.

    A large or cross-location copy takes several rewrite calls, each continuing from the token of
    the last; ``conditions`` (e.g. ``if_generation_match=0``) go to every call. The bytes never pass
    through this machine.
    """
    from google.cloud.storage.retry import DEFAULT_RETRY

    token = None
    while True:
        token, _done, _total = target.rewrite(source, token=token, retry=DEFAULT_RETRY, **conditions)
        if token is None:
            return
