"""The cache layout, byte-compatible with tensorflow_hub 0.16, plus our revisions and metadata.

::

    <cache>/<sha1(handle)>                   where tensorflow_hub looks: the current revision (local: a
                                             symlink to it; gs://: a copy of it under that prefix)
    <cache>/<sha1>.revisions/<rev>/          an immutable revision of the model: the ``path`` we hand out
    <cache>/<sha1>.revisions/<rev>.json      that revision's metadata (sha256, manifest, superseded_at)
    <cache>/<sha1>.descriptor.txt            tensorflow_hub's three informational lines
    <cache>/<sha1>.lock                      "<host>.<pid>.<uid>" while someone stages
    <cache>/<sha1>.<uid>.tmp/                the holder's download in progress
    <cache>/<sha1>.meta.json                 ours, written last: the entry is complete; names the
                                             current revision (the one switch readers follow)
    <cache>/<sha1>.holds/<rev>/<holder>.json a hold: someone still uses that revision until an expiry

Entries written before revisions existed have a plain model dir at ``<sha1>/`` and metadata without
``revision``; they are converted (hard links locally, server-side copies on GCS) the first time
this release stages or refreshes them.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from tfhub_cache.cache.records import EntryMeta
from tfhub_cache.storage.base import MODEL_MARKERS, Storage

META_VERSION = 2
#: A revision id: 12 hex digits, random (unique per published copy, never reused for other bytes).
REVISION_RE = re.compile(r"^[0-9a-f]{12}$")
ENTRY_RE = re.compile(r"^(?P<key>[0-9a-f]{40})(?P<suffix>\..+)?$")
TMP_RE = re.compile(r"^(?P<key>[0-9a-f]{40})\.(?P<uid>[0-9a-f]+)\.tmp$")
#: ``<name>.tmp<uuid hex>``: an atomic small-file write (lock, meta, descriptor) cut short by a kill.
WRITE_TMP_RE = re.compile(r"^[0-9a-f]{40}\..+\.tmp[0-9a-f]{32}$")


@dataclass(frozen=True)
class EntryNames:
    """Names (relative to the cache root) of everything that belongs to one cache entry."""

    key: str

    @property
    def model(self) -> str:
        return self.key

    @property
    def descriptor(self) -> str:
        return f"{self.key}.descriptor.txt"

    @property
    def lock(self) -> str:
        return f"{self.key}.lock"

    @property
    def meta(self) -> str:
        return f"{self.key}.meta.json"

    def tmp(self, uid: str) -> str:
        return f"{self.key}.{uid}.tmp"

    @property
    def revisions(self) -> str:
        return f"{self.key}.revisions"

    def revision(self, rev: str) -> str:
        return f"{self.key}.revisions/{rev}"

    def revision_meta(self, rev: str) -> str:
        return f"{self.key}.revisions/{rev}.json"

    @property
    def holds(self) -> str:
        return f"{self.key}.holds"

    def revision_holds(self, rev: str) -> str:
        return f"{self.key}.holds/{rev}"


def new_uid() -> str:
    return uuid.uuid4().hex


def new_revision_id() -> str:
    """A fresh revision id; random so that a revision name is never reused for different bytes."""
    return uuid.uuid4().hex[:12]


def lock_content(uid: str) -> str:
    """tensorflow_hub's lock content: ``<hostname>.<pid>.<uid>`` (the uid names the holder's tmp dir)."""
    return f"{socket.gethostname()}.{os.getpid()}.{uid}"


@dataclass(frozen=True)
class LockOwner:
    host: str
    pid: int
    uid: str


def parse_lock_content(text: str) -> LockOwner | None:
    """Split lock content; hostnames may contain dots, so pid and uid are taken from the right."""
    host, _, rest = text.strip().rpartition(".")
    uid = rest
    host, _, pid_text = host.rpartition(".")
    if not host or not pid_text.isdigit() or not uid:
        return None
    return LockOwner(host=host, pid=int(pid_text), uid=uid)


def descriptor_text(handle: str) -> str:
    """The descriptor tensorflow_hub writes (informational; no code reads it)."""
    return "Module: %s\nDownload Time: %s\nDownloader Hostname: %s (PID:%d)" % (  # noqa: UP031 - tf_hub's format
        handle,
        str(datetime.datetime.today()),
        socket.gethostname(),
        os.getpid(),
    )


def encode_meta(meta: Mapping[str, Any]) -> bytes:
    return json.dumps({**meta, "format_version": META_VERSION}, indent=1, sort_keys=True).encode("utf8")


def decode_meta(data: bytes | None) -> EntryMeta | None:
    """Parse entry or revision metadata; anything unreadable counts as absent (the entry is then not trusted)."""
    if not data:
        return None
    try:
        meta = json.loads(data)
    except ValueError:
        return None
    if not isinstance(meta, dict) or "handle" not in meta:
        return None
    return cast(EntryMeta, meta)


# -- the completeness rule ------------------------------------------------------------------------------


def tree_of(names: EntryNames, meta: Mapping[str, Any] | None) -> str:
    """Where the model of ``meta`` lives: its revision, or the model dir (no metadata, or an older release's)."""
    rev = (meta or {}).get("revision")
    return names.revision(str(rev)) if rev else names.model


def find_marker(storage: Storage, tree: str, meta: Mapping[str, Any] | None) -> str | None:
    """The model marker present in ``tree``: the one ``meta`` names, else the first of :data:`MODEL_MARKERS`."""
    wanted = (meta or {}).get("marker")
    candidates = (str(wanted),) if wanted else MODEL_MARKERS
    return next((m for m in candidates if storage.has_file(f"{tree}/{m}")), None)


def is_complete(meta: Mapping[str, Any] | None, marker: str | None, *, locked: bool) -> bool:
    """The one rule for "an entry is complete" (a cache hit for stagers, ``complete`` for ``ls``).

    With our metadata: its tree has its model marker (the metadata is written last, after the
    tree). Without it (a directory tensorflow_hub filled): the marker is there and nobody holds
    the lock, since tensorflow_hub writes the marker while still holding it.
    """
    if meta is not None:
        return marker is not None
    return marker is not None and not locked


def revision_exists(storage: Storage, names: EntryNames, rev: str) -> bool:
    """A revision exists while its metadata does: written after its tree, removed first by prune (holds rely on it)."""
    return storage.has_file(names.revision_meta(rev))


def has_entry_meta(storage: Storage, names: EntryNames) -> bool:
    """The entry's metadata exists (it was staged, or is being refreshed, since a listing was taken)."""
    return storage.has_file(names.meta)
