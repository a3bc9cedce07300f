"""What is in a cache, whether it is intact, and how to make it small again: ``ls``, ``verify``, ``prune``.

A cache entry is everything named after one key (``sha1(handle)``): the model dir, descriptor,
lock, metadata and any ``<key>.<uid>.tmp`` dirs (see :mod:`~tfhub_cache.cache.layout`).
Everything here works on a :class:`~tfhub_cache.storage.base.Storage`, so local and
``gs://`` caches behave alike, and nothing touches the network.

Pruning is safe next to running stagers because it deletes an entry only while holding that
entry's lock, taken with the very same create-only primitive stagers use: a stager that starts
meanwhile waits, then finds no entry and downloads again. Locks of live holders are never broken;
locks of dead holders (same host and the process is gone, or no lease renewal and no tmp-dir
progress for ``lock_timeout``) are cleaned up, like their tmp dirs.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypedDict

import google_crc32c

from tfhub_cache.cache import aliases
from tfhub_cache.cache import holds as holds_store
from tfhub_cache.cache.holds import Hold
from tfhub_cache.cache.layout import (
    ENTRY_RE,
    TMP_RE,
    WRITE_TMP_RE,
    EntryNames,
    decode_meta,
    find_marker,
    has_entry_meta,
    is_complete,
    new_uid,
    tree_of,
)
from tfhub_cache.cache.locks import CacheLock, LockState, judge_lock
from tfhub_cache.cache.records import EntryMeta, ManifestRecord, RevisionMeta
from tfhub_cache.cache.revisions import list_revisions
from tfhub_cache.errors import InvalidHandleError, LockTimeoutError
from tfhub_cache.handles import parse_handle
from tfhub_cache.settings import DEFAULT_LOCK_TIMEOUT
from tfhub_cache.storage.base import ObjectStat, Storage
from tfhub_cache.timestamps import iso_utc, parse_iso
from tfhub_cache.units import format_age, format_bytes_iec, parse_age, parse_size

log = logging.getLogger(__name__)

#: How long a superseded revision stays readable by default (tasks given its ``path`` may still load it).
DEFAULT_SUPERSEDED_MAX_AGE = "1d"

#: Entry states shown by ``tfhub-cache ls``.
COMPLETE, PARTIAL, LOCKED = "complete", "partial", "locked"

_CHUNK = 1 << 20
# Leftovers of an atomic small-file write (``<name>.tmp<hex>``, tensorflow_hub's naming, and ours).


# -- listing ------------------------------------------------------------------------------------------


@dataclass
class _Revision:
    """One revision dir of an entry, as found."""

    rev: str
    current: bool = False
    meta: RevisionMeta | None = None
    size: int = 0
    files: int = 0
    meta_bytes: int = 0
    superseded_since: float | None = None  # epoch seconds; None for the current revision
    holds: list[Hold] = field(default_factory=list)  # expired ones included

    def as_dict(self, storage: Storage, names: EntryNames, now: float) -> dict[str, Any]:
        meta = self.meta or {}
        staged = parse_iso(meta.get("staged_at"))
        return {
            "revision": self.rev,
            "current": self.current,
            "path": storage.location(names.revision(self.rev)),
            "size": self.size,
            "files": self.files,
            "sha256": meta.get("sha256"),
            "staged_at": meta.get("staged_at"),
            "superseded_at": meta.get("superseded_at"),
            "age_s": round(now - staged, 1) if staged else None,
            "superseded_for_s": round(now - self.superseded_since, 1) if self.superseded_since else None,
            "holds": [
                {"holder": h["holder"], "expires_at": h["expires_at"], "expired": h["expired"]} for h in self.holds
            ],
        }


@dataclass
class _Entry:
    """Everything the cache root holds for one key (internal; :func:`list_entries` returns dicts)."""

    key: str
    has_model: bool = False
    has_revisions: bool = False
    has_descriptor: bool = False
    has_meta: bool = False
    has_holds: bool = False
    tmp_dirs: list[str] = field(default_factory=list)
    write_leftovers: list[str] = field(default_factory=list)
    meta: EntryMeta | None = None
    handle: str | None = None
    lock: LockState | None = None
    marker: str | None = None
    model_bytes: int = 0
    model_files: int = 0
    tmp_bytes: int = 0
    other_bytes: int = 0
    last_used: float = 0.0
    meta_token: str | None = None
    revisions: dict[str, _Revision] = field(default_factory=dict)
    view_bytes: int = 0

    @property
    def names(self) -> EntryNames:
        return EntryNames(self.key)

    @property
    def current_revision(self) -> str | None:
        rev = (self.meta or {}).get("revision")
        return str(rev) if rev else None

    @property
    def tree(self) -> str:
        """Where the current model lives: its revision, or the model dir of an older release's entry."""
        return tree_of(self.names, self.meta)

    def superseded(self) -> list[_Revision]:
        return [r for r in self.revisions.values() if not r.current]

    @property
    def complete(self) -> bool:
        """A hit for the stager: metadata plus its marker, or a tensorflow_hub-filled dir (no lock)."""
        return is_complete(self.meta if self.has_meta else None, self.marker, locked=self.lock is not None)

    @property
    def state(self) -> str:
        if self.lock is not None:
            return LOCKED
        return COMPLETE if self.complete else PARTIAL

    @property
    def size(self) -> int:
        revisions = sum(r.size + r.meta_bytes for r in self.revisions.values())
        model = self.model_bytes if self.current_revision is None else 0  # else counted with its revision
        return model + self.view_bytes + revisions + self.tmp_bytes + self.other_bytes

    def as_dict(self, storage: Storage, now: float | None = None) -> dict[str, Any]:
        meta = self.meta or {}
        now = time.time() if now is None else now
        return {
            "handle": self.handle,
            "key": self.key,
            "path": storage.location(self.tree),
            "revision": self.current_revision,
            "revisions": [
                r.as_dict(storage, self.names, now)
                for r in sorted(self.revisions.values(), key=lambda r: (not r.current, -(r.superseded_since or 0)))
            ],
            "state": self.state,
            "size": self.size,
            "files": self.model_files,
            "staged_at": meta.get("staged_at"),
            "checked_at": meta.get("checked_at"),
            "last_used": iso_utc(self.last_used) if self.last_used else None,
            "etag": meta.get("etag"),
            "last_modified": meta.get("last_modified"),
            "sha256": meta.get("sha256"),
            "source": "tensorflow_hub" if meta.get("adopted_from") or (self.marker and not self.has_meta) else None,
            "lock": self.lock.content if self.lock else None,
            "lock_stale": self.lock.stale if self.lock else None,
            "tmp": list(self.tmp_dirs),
        }


def list_entries(storage: Storage, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> list[dict[str, Any]]:
    """Every entry of the cache as a dict, most recently used first. Reads only; adopts nothing.

    Keys: ``handle`` (None when neither metadata nor descriptor names it), ``key``, ``path``,
    ``state`` (``complete`` / ``partial`` / ``locked``), ``size`` (bytes the entry occupies,
    tmp dirs included), ``files`` (files in the model dir), ``staged_at``, ``checked_at``,
    ``last_used`` (mtime of the metadata, which stagers touch on every hit), ``etag``,
    ``last_modified``, ``sha256``, ``source``, ``lock``, ``lock_stale``, ``tmp``, ``revision`` (the
    current one) and ``revisions`` (current and superseded: ``revision``, ``current``, ``path``,
    ``size``, ``files``, ``sha256``, ``staged_at``, ``superseded_at``, ``age_s``, ``superseded_for_s``,
    ``holds``: ``[{"holder", "expires_at", "expired"}]``, see :mod:`~tfhub_cache.cache.holds`).
    """
    now = time.time()
    return [e.as_dict(storage, now) for e in _scan(storage, lock_timeout)]


def _scan(storage: Storage, lock_timeout: float) -> list[_Entry]:
    storage.check_exists()  # a missing cache is an error, not "0 entries"
    entries: dict[str, _Entry] = {}
    now = time.time()
    for name in storage.list_root():
        match = ENTRY_RE.match(name)
        if not match:
            continue
        entry = entries.setdefault(match.group("key"), _Entry(match.group("key")))
        suffix = match.group("suffix") or ""
        if suffix == "":
            entry.has_model = True
        elif suffix == ".revisions":
            entry.has_revisions = True
        elif suffix == ".descriptor.txt":
            entry.has_descriptor = True
        elif suffix == ".meta.json":
            entry.has_meta = True
        elif suffix == ".holds":
            entry.has_holds = True
        elif suffix == ".lock":
            pass  # read below, after the listing
        elif TMP_RE.match(name):
            entry.tmp_dirs.append(name)
        elif WRITE_TMP_RE.match(name):
            entry.write_leftovers.append(name)
    for entry in entries.values():
        _fill(storage, entry, lock_timeout, now)
    return sorted(entries.values(), key=lambda e: (-e.last_used, e.key))


def _fill(storage: Storage, entry: _Entry, lock_timeout: float, now: float) -> None:
    names = entry.names
    mtimes: list[float] = []
    entry.lock = read_lock(storage, names, lock_timeout, now=now)
    if entry.has_meta:
        entry.meta = decode_meta(storage.read_bytes(names.meta))
        entry.has_meta = entry.meta is not None
        st = storage.stat(names.meta)
        if st is not None:
            entry.meta_token = _change_token(st)
            entry.other_bytes += st.size
            if entry.has_meta:
                entry.last_used = st.mtime
    if entry.has_revisions:
        _fill_revisions(storage, entry)
    if entry.has_holds:
        for record in holds_store.read_holds(storage, names, now=now):
            if record["revision"] in entry.revisions:
                entry.revisions[record["revision"]].holds.append(record)
    if entry.has_model and entry.current_revision is not None and storage.view_target(names.model) is None:
        entry.view_bytes = sum(size for _, size in storage.list_tree(names.model))  # gs://: a copy
    if entry.has_model or entry.current_revision is not None:
        for _rel, size in storage.list_tree(entry.tree):
            entry.model_files += 1
            entry.model_bytes += size
        entry.marker = find_marker(storage, entry.tree, entry.meta)
        if entry.marker is not None:
            st = storage.stat(f"{entry.tree}/{entry.marker}")
            if st is not None:
                mtimes.append(st.mtime)
    for tmp in entry.tmp_dirs:
        entry.tmp_bytes += sum(size for _, size in storage.list_tree(tmp))
        st = storage.stat(tmp)
        if st is not None:
            mtimes.append(st.mtime)
    for name in [names.descriptor, names.lock, *entry.write_leftovers]:
        st = storage.stat(name)
        if st is not None:
            entry.other_bytes += st.size
            mtimes.append(st.mtime)
    if entry.meta is not None:
        entry.handle = entry.meta.get("handle")
    elif entry.has_descriptor:
        entry.handle = _descriptor_handle(storage.read_bytes(names.descriptor))
    if not entry.last_used:
        entry.last_used = max(mtimes, default=0.0)


def _fill_revisions(storage: Storage, entry: _Entry) -> None:
    """Sizes, metadata and supersession times of every revision dir of ``entry``."""
    names = entry.names
    current = entry.current_revision
    for rev_id, listing in list_revisions(storage, names).items():
        rev = entry.revisions.setdefault(rev_id, _Revision(rev_id))
        rev.size, rev.files, rev.meta_bytes = listing.size, listing.files, listing.meta_bytes or 0
    for rev in entry.revisions.values():
        rev.current = rev.rev == current
        if rev.meta_bytes:
            rev.meta = decode_meta(storage.read_bytes(names.revision_meta(rev.rev)))
        if not rev.current:
            since = parse_iso((rev.meta or {}).get("superseded_at"))
            if since is None:
                st = storage.stat(names.revision_meta(rev.rev)) if rev.meta_bytes else None
                since = st.mtime if st is not None else None
            rev.superseded_since = since


def _descriptor_handle(data: bytes | None) -> str | None:
    """The handle from tensorflow_hub's descriptor (``Module: <handle>`` on the first line)."""
    lines = (data or b"").decode("utf8", "replace").splitlines()
    if lines and lines[0].startswith("Module:"):
        return lines[0].removeprefix("Module:").strip() or None
    return None


def read_lock(storage: Storage, names: EntryNames, timeout: float, *, now: float | None = None) -> LockState | None:
    """The entry's lock and whether its holder is gone, by :class:`CacheLock`'s own rules, read-only."""
    return judge_lock(storage, names.lock, timeout, tmp_name=names.tmp, now=now)


# -- verify -------------------------------------------------------------------------------------------


def verify(storage: Storage, handle: str | None = None, *, all_revisions: bool = False) -> dict[str, Any]:
    """Re-hash staged files against the manifest recorded at staging (size and CRC32C).

    The current revision of each entry is checked; with ``all_revisions`` superseded revisions too
    (one report each, with ``revision`` set and ``current`` False).

    Returns ``{"ok": bool, "entries": [...]}``; each entry has ``handle``, ``key``, ``path``,
    ``status`` and the relpaths that are ``missing``, ``changed`` or ``extra``. ``status`` is

    * ``ok``: every file is present and intact, nothing extra;
    * ``damaged``: something is missing (the model marker included), changed or extra;
    * ``no manifest``: staged by tensorflow_hub (adopted or not): nothing to compare with;
    * ``partial``: leftovers without metadata (a stager died; ``prune`` removes them);
    * ``locked``: being staged right now (not verified);
    * ``not staged``: ``handle`` was asked for and is not in the cache.

    ``ok`` is False when anything is ``damaged``, ``partial`` or ``not staged``.
    """
    entries = _scan(storage, DEFAULT_LOCK_TIMEOUT)
    if handle is not None:
        key = _key_of(handle)
        entries = [e for e in entries if e.key == key]
        if not entries:
            return {
                "ok": False,
                "entries": [
                    {
                        "handle": handle,
                        "key": key,
                        "path": storage.location(key),
                        "status": "not staged",
                        "files": 0,
                        "missing": [],
                        "changed": [],
                        "extra": [],
                    }
                ],
            }
    reports = []
    for entry in entries:
        reports.append(_verify_entry(storage, entry))
        if all_revisions:
            for rev in sorted(entry.superseded(), key=lambda r: r.rev):
                reports.append(_verify_revision(storage, entry, rev))
    bad = {"damaged", "partial", "not staged"}
    return {"ok": not any(r["status"] in bad for r in reports), "entries": reports}


def _verify_entry(storage: Storage, entry: _Entry) -> dict[str, Any]:
    report: dict[str, Any] = {
        "handle": entry.handle,
        "key": entry.key,
        "path": storage.location(entry.tree),
        "revision": entry.current_revision,
        "current": True,
        "status": entry.state,
        "files": entry.model_files,
        "missing": [],
        "changed": [],
        "extra": [],
    }
    manifest: dict[str, ManifestRecord] = (entry.meta or {}).get("manifest") or {}
    if entry.state == LOCKED or not (manifest or entry.complete):
        return report  # being staged, or nothing recorded to compare with
    if not manifest:
        report["status"] = "no manifest"
        return report
    return _compare(storage, entry.tree, manifest, report)


def _verify_revision(storage: Storage, entry: _Entry, rev: _Revision) -> dict[str, Any]:
    report: dict[str, Any] = {
        "handle": entry.handle,
        "key": entry.key,
        "path": storage.location(entry.names.revision(rev.rev)),
        "revision": rev.rev,
        "current": False,
        "status": "partial" if rev.meta is None else "superseded",
        "files": rev.files,
        "missing": [],
        "changed": [],
        "extra": [],
    }
    manifest: dict[str, ManifestRecord] = (rev.meta or {}).get("manifest") or {}
    if rev.meta is None:
        return report
    if not manifest:
        report["status"] = "no manifest"
        return report
    return _compare(storage, entry.names.revision(rev.rev), manifest, report)


def _compare(
    storage: Storage, tree: str, manifest: dict[str, ManifestRecord], report: dict[str, Any]
) -> dict[str, Any]:
    present = dict(storage.list_tree(tree))
    for rel, record in sorted(manifest.items()):
        if rel not in present:
            report["missing"].append(rel)
        elif present[rel] != record.get("size") or _crc32c(storage, f"{tree}/{rel}") != record.get("crc32c"):
            report["changed"].append(rel)
    report["extra"] = sorted(set(present) - set(manifest))
    damaged = report["missing"] or report["changed"] or report["extra"]
    report["status"] = "damaged" if damaged else "ok"
    return report


def _crc32c(storage: Storage, name: str) -> str | None:
    crc = google_crc32c.Checksum()
    try:
        with storage.open_read(name) as f:
            while chunk := f.read(_CHUNK):
                crc.update(chunk)
    except FileNotFoundError:
        return None
    return base64.b64encode(crc.digest()).decode("ascii")


# -- prune --------------------------------------------------------------------------------------------


class PrunedEntry(TypedDict):
    """A whole entry in a prune report (``removed`` or ``kept``)."""

    handle: str | None
    key: str
    path: str
    size: int
    last_used: str | None
    reason: str


class PrunedRevision(TypedDict):
    """A superseded revision removed by prune (the entry and its current revision stay)."""

    handle: str | None
    key: str
    revision: str
    path: str
    size: int
    reason: str


class HeldRevision(TypedDict):
    """A revision prune would have removed but kept because someone holds it (see :mod:`.holds`)."""

    handle: str | None
    key: str
    revision: str
    path: str
    holders: list[str]
    reason: str


class CleanedItem(TypedDict):
    """A leftover of a dead stager removed from an entry that stays: stale lock, tmp dir, small-file write."""

    key: str
    name: str
    size: int
    reason: str


class PruneReport(TypedDict):
    """What :func:`prune` removed (or would remove): the prune operator's XCom, ``tfhub-cache prune --json``."""

    removed: list[PrunedEntry]
    removed_revisions: list[PrunedRevision]
    held: list[HeldRevision]
    cleaned: list[CleanedItem]
    kept: list[PrunedEntry]
    freed_bytes: int
    total_bytes: int
    over_budget: bool
    dry_run: bool


def prune(
    storage: Storage,
    *,
    max_age: float | str | None = None,
    max_total_bytes: int | str | None = None,
    keep: Iterable[str] = (),
    dry_run: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    superseded_max_age: float | str | None = DEFAULT_SUPERSEDED_MAX_AGE,
) -> PruneReport:
    """Make the cache small again; return what was (or, with ``dry_run``, would be) removed.

    In this order: leftovers of dead stagers (stale locks, their ``.tmp`` dirs, half-written
    entries, revision dirs that never got their metadata); then superseded revisions older than
    ``superseded_max_age`` (the grace period for readers of an older ``path``; ``0`` removes every
    superseded revision, ``None`` none; the current revision is never removed); then whole entries
    not used for ``max_age`` seconds; then the least recently used entries until the cache holds
    at most ``max_total_bytes``. A removed entry's alias index objects (:mod:`.aliases`) go with it;
    those of entries removed earlier are cleaned. Entries whose handle (or key) is in ``keep`` and entries locked by
    a live stager are never touched; held revisions (:mod:`.holds`, unexpired) and their entries
    are never removed, and a held revision that would have been is listed in ``held``. Every deletion happens under
    the entry's lock, so a stager that starts meanwhile waits and then stages afresh.

    Returns ``{"removed": [...], "removed_revisions": [...], "cleaned": [...], "kept": [...],
    "freed_bytes", "total_bytes" (what remains), "over_budget" (the budget could not be met),
    "dry_run", "held"}``; ``held`` lists ``{"handle", "key", "revision", "path", "holders",
    "reason"}``; ``removed_revisions`` lists ``{"handle", "key", "revision", "path", "size",
    "reason"}``; ``removed`` and
    ``kept`` list entries as ``{"handle", "key", "path", "size", "last_used", "reason"}``,
    ``cleaned`` lists stale locks, tmp dirs and write leftovers of entries that stay.
    """
    max_age_s = parse_age(max_age) if max_age is not None else None
    grace_s = parse_age(superseded_max_age) if superseded_max_age is not None else None
    budget = parse_size(max_total_bytes) if max_total_bytes is not None else None
    keep_keys = {_key_of(h) for h in keep if str(h).strip()}
    now = time.time()
    entries = _scan(storage, lock_timeout)
    pruner = _Pruner(storage, dry_run=dry_run, lock_timeout=lock_timeout)

    candidates: list[_Entry] = []
    for entry in entries:
        live_lock = entry.lock is not None and not entry.lock.stale
        if entry.key in keep_keys:
            pruner.clean(entry)
            pruner.keep(entry, "in keep")
        elif live_lock:
            assert entry.lock is not None
            pruner.keep(entry, f"locked by {entry.lock.content} ({entry.lock.reason})")
        elif not entry.complete:
            pruner.remove(entry, "incomplete (left by an interrupted stager)")
        else:
            pruner.clean(entry)
            pruner.remove_revisions(entry, now=now, grace=grace_s)
            held = holds_store.active(h for r in entry.revisions.values() for h in r.holds)
            if held:
                pruner.keep(entry, holds_store.describe(held, now))
            else:
                candidates.append(entry)

    survivors: list[_Entry] = []
    for entry in candidates:
        idle = now - entry.last_used
        if max_age_s is not None and idle > max_age_s:
            pruner.remove(entry, f"unused for {format_age(idle)} (max age {format_age(max_age_s)})")
        else:
            survivors.append(entry)

    if budget is not None:
        total = sum(e.size for e in entries if e.key not in pruner.removed_keys)
        for entry in sorted(survivors, key=lambda e: (e.last_used, e.key)):  # least recently used first
            if total <= budget:
                break
            if pruner.remove(entry, f"least recently used while the cache is over {format_bytes_iec(budget)}"):
                total -= entry.size

    for entry in survivors:
        if entry.key not in pruner.removed_keys and entry.key not in pruner.kept_keys:
            pruner.keep(entry, "within limits")

    scanned = {e.key for e in entries}
    for key, names in aliases.index_by_entry(storage).items():
        if key not in scanned:  # left by an entry removed earlier (those removed now took theirs along)
            pruner.clean_index(key, names)

    remaining = sum(e.size for e in entries if e.key not in pruner.removed_keys)
    return pruner.report(total_bytes=remaining, over_budget=budget is not None and remaining > budget)


class _Pruner:
    """Carries out (or, dry, only records) removals, each under the entry's lock."""

    def __init__(self, storage: Storage, *, dry_run: bool, lock_timeout: float) -> None:
        self.storage = storage
        self.dry_run = dry_run
        self.lock_timeout = lock_timeout
        self.uid = new_uid()
        self.removed: list[PrunedEntry] = []
        self.removed_revisions: list[PrunedRevision] = []
        self.held: list[HeldRevision] = []
        self.kept: list[PrunedEntry] = []
        self.cleaned: list[CleanedItem] = []
        self.removed_keys: set[str] = set()
        self.kept_keys: set[str] = set()
        self.freed = 0

    def report(self, *, total_bytes: int, over_budget: bool) -> PruneReport:
        """The one builder of a :class:`PruneReport`."""
        return PruneReport(
            removed=self.removed,
            removed_revisions=self.removed_revisions,
            held=self.held,
            cleaned=self.cleaned,
            kept=self.kept,
            freed_bytes=self.freed,
            total_bytes=total_bytes,
            over_budget=over_budget,
            dry_run=self.dry_run,
        )

    def _row(self, entry: _Entry, reason: str, *, size: int | None = None) -> PrunedEntry:
        return PrunedEntry(
            handle=entry.handle,
            key=entry.key,
            path=self.storage.location(entry.key),
            size=entry.size if size is None else size,
            last_used=iso_utc(entry.last_used) if entry.last_used else None,
            reason=reason,
        )

    def keep(self, entry: _Entry, reason: str) -> None:
        self.kept.append(self._row(entry, reason))
        self.kept_keys.add(entry.key)

    def remove(self, entry: _Entry, reason: str) -> bool:
        """Delete the whole entry; False (and kept) when a stager got to it first."""
        if self.dry_run:
            freed = entry.size
        else:
            lock = self._lock(entry)
            if lock is None:
                self.keep(entry, "locked by a stager that started meanwhile")
                return False
            try:
                if self._changed_since_scan(entry):
                    self.keep(entry, "used or restaged while pruning")
                    return False
                retired = {rev: self._retire_meta(entry, rev) for rev in list(entry.revisions)}
                held = holds_store.active(holds_store.read_holds(self.storage, entry.names))
                if held:
                    for rev, data in retired.items():
                        self._restore_meta(entry, rev, data)
                    self.keep(entry, holds_store.describe(held))
                    return False
                freed = self._delete_entry(entry) + sum(len(data or b"") for data in retired.values())
            finally:
                lock.release()
        self.removed.append(self._row(entry, reason, size=freed))
        self.removed_keys.add(entry.key)
        self.freed += freed
        log.info(  # the handle (a URL) is followed by a space: log viewers link trailing punctuation with it
            "%s %s, %s, of %s", "Would remove" if self.dry_run else "Removed", entry.key, reason, entry.handle
        )
        return True

    def remove_revisions(self, entry: _Entry, *, now: float, grace: float | None) -> None:
        """Delete superseded revisions past their grace period, and revision dirs without metadata.

        Under the entry's lock, the current revision is read again and never deleted: a refresh
        that switched meanwhile makes the old current revision merely superseded (from now).
        """
        victims: list[tuple[_Revision, str]] = []
        for rev in entry.superseded():
            if rev.meta is None:
                victims.append((rev, "revision dir without metadata (left by an interrupted stager)"))
            elif grace is not None and rev.superseded_since is not None and now - rev.superseded_since >= grace:
                idle = format_age(now - rev.superseded_since)
                victims.append((rev, f"superseded {idle} ago (grace {format_age(grace)})"))
        if not victims:
            return
        lock = None if self.dry_run else self._lock(entry)
        if not self.dry_run and lock is None:
            return
        try:
            current = entry.current_revision
            if lock is not None:
                current = (decode_meta(self.storage.read_bytes(entry.names.meta)) or {}).get("revision")
            for rev, reason in victims:
                if rev.rev == current:
                    continue
                names = entry.names
                held = holds_store.active(rev.holds if self.dry_run else self._holds(entry, rev.rev))
                if self.dry_run or held:
                    freed = rev.size + rev.meta_bytes
                else:
                    # Metadata first, then look for holds again: a holder checks it after writing its hold.
                    retired = self._retire_meta(entry, rev.rev)
                    held = self._holds(entry, rev.rev)
                    if held:
                        self._restore_meta(entry, rev.rev, retired)
                    else:
                        freed = len(retired or b"") + self.storage.delete_tree(names.revision(rev.rev))
                        self.storage.delete_tree(names.revision_holds(rev.rev))
                if held:
                    self.held.append(
                        HeldRevision(
                            handle=entry.handle,
                            key=entry.key,
                            revision=rev.rev,
                            path=self.storage.location(names.revision(rev.rev)),
                            holders=[h["holder"] for h in held],
                            reason=holds_store.describe(held),
                        )
                    )
                    log.info("Kept revision %s of %s: %s.", rev.rev, entry.key, holds_store.describe(held))
                    continue
                del entry.revisions[rev.rev]
                self.freed += freed
                self.removed_revisions.append(
                    PrunedRevision(
                        handle=entry.handle,
                        key=entry.key,
                        revision=rev.rev,
                        path=self.storage.location(names.revision(rev.rev)),
                        size=freed,
                        reason=reason,
                    )
                )
                log.info(
                    "%s revision %s of %s: %s.",
                    "Would remove" if self.dry_run else "Removed",
                    rev.rev,
                    entry.key,
                    reason,
                )
        finally:
            if lock is not None:
                lock.release()

    def _holds(self, entry: _Entry, rev: str) -> list[Hold]:
        return holds_store.active(holds_store.read_holds(self.storage, entry.names, revision=rev))

    def _retire_meta(self, entry: _Entry, rev: str) -> bytes | None:
        """Delete a revision's metadata (a hold written from now on sees it gone); return it to restore."""
        name = entry.names.revision_meta(rev)
        data = self.storage.read_bytes(name)
        if data is not None:
            self.storage.delete(name)
        return data

    def _restore_meta(self, entry: _Entry, rev: str, data: bytes | None) -> None:
        if data is not None:
            self.storage.write_bytes(entry.names.revision_meta(rev), data)

    def clean(self, entry: _Entry) -> None:
        """Remove a dead stager's lock, tmp dirs and write leftovers from an entry that may stay.

        Under the lock taken here nobody else can be writing ``<key>.<uid>.tmp``, so every tmp dir
        belongs to a stager that is gone; an entry with a live lock is left alone.
        """
        if entry.lock is not None and not entry.lock.stale:
            return
        now = time.time()
        leftovers = [n for n in entry.write_leftovers if self._older_than_timeout(n, now)]
        stale_lock = entry.lock is not None and entry.lock.stale
        if not (entry.tmp_dirs or leftovers or stale_lock):
            return
        if self.dry_run:
            tmp_freed = {tmp: sum(s for _, s in self.storage.list_tree(tmp)) for tmp in entry.tmp_dirs}
        else:
            lock = self._lock(entry)
            if lock is None:
                return
            try:
                tmp_freed = {tmp: self.storage.delete_tree(tmp) for tmp in entry.tmp_dirs}
                for name in leftovers:
                    self.storage.delete(name)
            finally:
                lock.release()
        if stale_lock:
            assert entry.lock is not None
            reason = f"stale lock of {entry.lock.content}: {entry.lock.reason}"
            self.cleaned.append(CleanedItem(key=entry.key, name=entry.names.lock, size=0, reason=reason))
            entry.lock = None
        for tmp, size in tmp_freed.items():
            self.cleaned.append(CleanedItem(key=entry.key, name=tmp, size=size, reason="tmp dir of a dead stager"))
            self.freed += size
        for name in leftovers:
            self.cleaned.append(CleanedItem(key=entry.key, name=name, size=0, reason="unfinished small-file write"))
        entry.tmp_dirs, entry.tmp_bytes = [], 0

    def clean_index(self, key: str, names: list[str]) -> None:
        """Remove the alias index objects of an entry that is gone (pruned now or earlier)."""
        if not self.dry_run and has_entry_meta(self.storage, EntryNames(key)):
            return  # staged since the scan: its index is fresh
        for name in names:
            if not self.dry_run:
                self.storage.delete(name)
            self.cleaned.append(CleanedItem(key=key, name=name, size=0, reason="alias index of a removed entry"))

    def _older_than_timeout(self, name: str, now: float) -> bool:
        st = self.storage.stat(name)
        return st is not None and now - st.mtime > self.lock_timeout

    def _changed_since_scan(self, entry: _Entry) -> bool:
        """Hits touch the metadata and stagers write it: either after the scan voids the decision."""
        st = self.storage.stat(entry.names.meta)
        return (_change_token(st) if st is not None else None) != entry.meta_token

    def _lock(self, entry: _Entry) -> CacheLock | None:
        """Take the entry's lock now (taking over a dead holder's), or None if a live stager has it."""
        lock = CacheLock(
            self.storage,
            entry.names.lock,
            self.uid,
            timeout=self.lock_timeout,
            wait_timeout=0.0,
            tmp_name=entry.names.tmp,
        )
        try:
            lock.acquire()
        except LockTimeoutError:
            return None
        return lock

    def _delete_entry(self, entry: _Entry) -> int:
        """Metadata first (readers stop trusting the entry), then the model, then the rest."""
        names = entry.names
        freed = 0
        for small in (names.meta, names.descriptor):
            st = self.storage.stat(small)
            if st is not None and self.storage.delete(small):
                freed += st.size
        view_is_link = self.storage.view_target(names.model) is not None
        view_bytes = self.storage.delete_tree(names.model)
        freed += 0 if view_is_link else view_bytes  # a symlink to a revision frees nothing of its own
        freed += self.storage.delete_tree(names.revisions)
        freed += self.storage.delete_tree(names.holds)
        for index in aliases.index_by_entry(self.storage).get(entry.key, []):
            self.storage.delete(index)  # the alias index pointing at this entry
        for name in self.storage.list_root(prefix=f"{entry.key}."):
            if TMP_RE.match(name):
                freed += self.storage.delete_tree(name)
            elif WRITE_TMP_RE.match(name):
                st = self.storage.stat(name)
                if st is not None and self.storage.delete(name):
                    freed += st.size
        return freed


def _change_token(st: ObjectStat) -> str:
    """Rewrites change the token; a hit's touch changes the mtime (on GCS only that: custom metadata)."""
    return f"{st.token}@{st.mtime}"


def _key_of(handle: str) -> str:
    """The cache key of a handle; a 40-hex key is accepted as itself (what ``ls`` shows)."""
    text = str(handle).strip()
    if re.fullmatch(r"[0-9a-f]{40}", text):
        return text
    try:
        return parse_handle(text).cache_key
    except InvalidHandleError as exc:
        raise InvalidHandleError(f"{exc} (given in keep/verify; a 40-character cache key works too)") from exc
