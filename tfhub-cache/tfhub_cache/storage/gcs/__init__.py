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

Modules: :mod:`.objects` (:class:`GCSObjects`: client, names, errors, listing, deletes, copies, trees
written markers last), :mod:`.storage` (:class:`GCSStorage`: the cache backend: small objects, locks,
trees), :mod:`.sink` (:class:`GCSTreeSink`: the order of publication), :mod:`.upload` (streamed,
resumable and composite uploads), :mod:`.credentials` (which client) and :mod:`.client_adapter`, the
one place that touches google-cloud-storage's private internals. ``gs://`` archives as a model
source live with the other sources, in :mod:`tfhub_cache.fetch.gcs_source`.
"""

from __future__ import annotations

from tfhub_cache.locations import parse_gs_url
from tfhub_cache.storage.gcs.objects import (
    DEFAULT_COMPOSITE_PART_BYTES,
    DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_MAX_WORKERS,
    DEFAULT_RESUME_WINDOW,
    DEFAULT_SMALL_FILE_MAX,
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_TOUCH_INTERVAL,
    LAST_USED_KEY,
    GCSObjects,
)
from tfhub_cache.storage.gcs.sink import GCSTreeSink
from tfhub_cache.storage.gcs.storage import GCSStorage

__all__ = [
    "DEFAULT_COMPOSITE_PART_BYTES",
    "DEFAULT_MAX_INFLIGHT_BYTES",
    "DEFAULT_MAX_WORKERS",
    "DEFAULT_RESUME_WINDOW",
    "DEFAULT_SMALL_FILE_MAX",
    "DEFAULT_STALL_TIMEOUT",
    "DEFAULT_TOUCH_INTERVAL",
    "LAST_USED_KEY",
    "GCSObjects",
    "GCSStorage",
    "GCSTreeSink",
    "parse_gs_url",
]
