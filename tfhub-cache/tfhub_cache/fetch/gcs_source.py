"""``gs://bucket/path/model.tar.gz`` handles: a model archive read from GCS (ranged in parallel, or one stream)."""

from __future__ import annotations

import base64
import datetime
import email.utils
from collections.abc import Callable
from typing import Any

from tfhub_cache.errors import ConfigurationError, DownloadError
from tfhub_cache.fetch.streams import ArchiveSource, ArchiveStream, QueuedArchiveStream, SourceInfo
from tfhub_cache.locations import parse_gs_url
from tfhub_cache.responses import is_permanent
from tfhub_cache.storage.base import CHUNK_SIZE, Storage
from tfhub_cache.storage.gcs.client_adapter import client_credentials, is_gcs_error, status_of
from tfhub_cache.storage.gcs.credentials import make_client, principal
from tfhub_cache.storage.gcs.objects import GCSObjects


class GCSArchiveSource(ArchiveSource):
    """A ``gs://bucket/path/model.tar.gz`` handle, streamed with bounded memory.

    The object's generation is its ETag, so ``refresh="if_changed"`` costs one metadata request.
    """

    def __init__(
        self, handle_url: str, *, storage: Storage | None = None, client: Any = None, connections: int | None = None
    ) -> None:
        self.url = handle_url
        self.connections = connections  # parallel ranged reads (:mod:`.ranged`); 1: one stream
        self.description = handle_url
        self.bucket_name, self.name = parse_gs_url(handle_url)
        if not self.name:
            raise ConfigurationError(f"{handle_url!r} names no object; expected gs://<bucket>/<path>.tar.gz.")
        self._client = client if client is not None else (storage.client if isinstance(storage, GCSObjects) else None)

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
        from tfhub_cache.fetch.ranged import connections_from, open_gcs_ranged

        crc = base64.b64decode(blob.crc32c) if blob.crc32c else None
        ranged = open_gcs_ranged(pinned, info, connections_from(self.connections), self._error, expected_crc32c=crc)
        return ranged if ranged is not None else _GCSStream(pinned, info, self._error)

    def _error(self, exc: BaseException) -> BaseException:
        if not is_gcs_error(exc):
            return exc
        status = status_of(exc)
        if status == 404:
            return DownloadError(f"Model archive {self.url!r} does not exist; check the handle.", permanent=True)
        if status in (401, 403):
            who = principal(client_credentials(self._client)) or "the caller"
            return DownloadError(
                f"Permission denied reading {self.url!r} for {who}: grant it storage.objects.get on "
                f"gs://{self.bucket_name}, or set gcp_conn_id in the tfhub connection.",
                permanent=True,
                status=status,
            )
        return DownloadError(
            f"Reading {self.url!r} failed: {type(exc).__name__}: {exc}.",
            permanent=is_permanent(status),
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
