"""Holds: "this revision is still in use until <expiry>", so that ``prune`` leaves it alone.

A training job that restarts after a preemption loads its model again from the ``path`` it was
handed; a refresh may have superseded that revision days ago. A hold is a small record per
(revision, holder) at ``<sha1>.holds/<rev>/<sha1(holder)>.json``. It is created with the backend's
create-only primitive (local ``O_EXCL``, GCS ``if_generation_match=0``), so holders never overwrite
each other and any number of them can hold one revision. Every hold has an expiry: a holder that
never releases (a crashed run) protects the revision only until then.

Holding and pruning agree without a lock between them: a holder first writes its hold, then checks
that the revision's metadata is still there; ``prune`` first removes that metadata, then looks for
holds (and puts the metadata back if one appeared). Whichever runs second sees the other, so a
revision is never deleted under a hold that was confirmed.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from collections.abc import Iterable
from typing import TypedDict

from tfhub_cache.cache.layout import REVISION_RE, EntryNames, decode_meta, revision_exists
from tfhub_cache.errors import CacheError, ConfigurationError
from tfhub_cache.handles import parse_handle
from tfhub_cache.storage.base import Storage
from tfhub_cache.timestamps import iso_utc, parse_iso
from tfhub_cache.units import format_age, parse_age


class Hold(TypedDict):
    """One hold record, as stored (plus ``expired`` when listed)."""

    handle: str
    key: str
    revision: str
    holder: str
    path: str
    created_at: str
    expires_at: str
    expired: bool


def holder_file(holder: str) -> str:
    """The file name of ``holder``'s record: a digest, since holders like ``dag/run_id`` hold ``/`` and ``:``."""
    return hashlib.sha1(holder.encode("utf8")).hexdigest()[:24] + ".json"


def hold(
    storage: Storage,
    handle: str,
    *,
    holder: str,
    ttl: float | str | datetime.timedelta,
    revision: str | None = None,
) -> Hold:
    """Hold ``revision`` of ``handle`` (default: its current revision) for ``holder`` during ``ttl``.

    Holding again as the same holder extends the expiry (never shortens it). Raises
    :class:`CacheError` when the handle is not staged or the revision does not exist (any more).
    """
    holder = _check_holder(holder)
    seconds = parse_age(ttl)
    if seconds <= 0:
        raise ConfigurationError(f"Hold TTL {ttl!r} must be positive, e.g. 12h or 7d.")
    names = EntryNames(parse_handle(handle).cache_key)
    rev = revision or _current_revision(storage, names, handle)
    if not REVISION_RE.match(rev) or not revision_exists(storage, names, rev):
        raise CacheError(
            f"{handle} has no revision {rev!r} in {storage.location()}; `tfhub-cache ls --json` lists its revisions."
        )
    now = time.time()
    record = Hold(
        handle=handle,
        key=names.key,
        revision=rev,
        holder=holder,
        path=storage.location(names.revision(rev)),
        created_at=iso_utc(now),
        expires_at=iso_utc(now + seconds),
        expired=False,
    )
    name = f"{names.revision_holds(rev)}/{holder_file(holder)}"
    for _attempt in range(5):
        if storage.create_exclusive(name, _encode(record)) is not None:
            break
        st = storage.stat(name)
        old = _decode(storage.read_bytes(name))
        if st is None or old is None:
            continue  # released (or unreadable) meanwhile: try to create it again
        if _expiry(old) >= now + seconds:
            record = old
            break
        if storage.write_bytes_if(name, _encode(Hold(**{**record, "created_at": old["created_at"]})), token=st.token):
            break
    else:
        raise CacheError(f"Could not write the hold {name} in {storage.location()}: it keeps changing; try again.")
    if not revision_exists(storage, names, rev):  # pruned before our hold was visible: it never held
        storage.delete(name)
        raise CacheError(f"Revision {rev} of {handle} was pruned while the hold was being written; stage it again.")
    return record


def release(storage: Storage, handle: str, *, holder: str, revision: str | None = None) -> list[Hold]:
    """Remove ``holder``'s hold on ``revision`` (default: on every revision of ``handle``); return the removed ones."""
    holder = _check_holder(holder)
    names = EntryNames(parse_handle(handle).cache_key)
    released = []
    for record in read_holds(storage, names, revision=revision, now=time.time()):
        if record["holder"] == holder:
            if storage.delete(f"{names.revision_holds(record['revision'])}/{holder_file(holder)}"):
                released.append(record)
    return released


def list_holds(storage: Storage, *, now: float | None = None) -> list[Hold]:
    """Every hold in the cache, expired ones included (``expired`` True), ordered by handle, revision, holder."""
    now = time.time() if now is None else now
    found: list[Hold] = []
    for name in storage.list_root():
        if name.endswith(".holds") and len(name) == 46:
            found.extend(read_holds(storage, EntryNames(name[:40]), now=now))
    return sorted(found, key=lambda h: (h["handle"], h["revision"], h["holder"]))


def active(holds: Iterable[Hold]) -> list[Hold]:
    return [h for h in holds if not h["expired"]]


def describe(holds: Iterable[Hold], now: float | None = None) -> str:
    """``held by a (11.9h left), b (2.0d left)``: the reason prune gives for keeping a revision."""
    now = time.time() if now is None else now
    parts = [f"{h['holder']} ({format_age(max(0.0, _expiry(h) - now))} left)" for h in holds]
    return "held by " + ", ".join(parts)


def read_holds(
    storage: Storage, names: EntryNames, *, revision: str | None = None, now: float | None = None
) -> list[Hold]:
    """The holds of one entry (of one ``revision`` when given), expired ones included."""
    now = time.time() if now is None else now
    prefix = names.revision_holds(revision) if revision else names.holds
    found: list[Hold] = []
    for rel, _size in storage.list_tree(prefix):
        if not rel.endswith(".json"):
            continue
        record = _decode(storage.read_bytes(f"{prefix}/{rel}"))
        if record is not None:
            found.append(Hold(**{**record, "expired": _expiry(record) <= now}))
    return found


def _current_revision(storage: Storage, names: EntryNames, handle: str) -> str:
    rev = (decode_meta(storage.read_bytes(names.meta)) or {}).get("revision")
    if not rev:
        raise CacheError(f"{handle} is not staged in {storage.location()} (or predates revisions); stage it first.")
    return str(rev)


def _check_holder(holder: object) -> str:
    text = str(holder or "").strip()
    if not text:
        raise ConfigurationError("A hold needs a holder name (e.g. the job or dag_id/run_id that uses the model).")
    return text


def _expiry(record: Hold) -> float:
    expires = parse_iso(record.get("expires_at"))
    return 0.0 if expires is None else expires  # unreadable expiry: protects nothing


def _encode(record: Hold) -> bytes:
    stored = {k: v for k, v in record.items() if k != "expired"}
    return json.dumps(stored, indent=1, sort_keys=True).encode("utf8")


def _decode(data: bytes | None) -> Hold | None:
    try:
        value = json.loads(data or b"")
    except ValueError:
        return None
    if not isinstance(value, dict) or not {"holder", "revision", "expires_at"} <= value.keys():
        return None
    value.setdefault("expired", False)
    return Hold(**value)  # type: ignore[typeddict-item]
