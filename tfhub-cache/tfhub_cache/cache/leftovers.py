"""What dead stagers leave in an entry, and its removal by the next stager that holds the lock.

A stager killed mid-way leaves its ``<key>.<uid>.tmp`` tree, a revision dir that never got its
``<rev>.json``, a small-file write cut short, or (before revisions) a half model dir. Whoever holds
the entry's lock next removes them: no live writer can own them any more. (``prune`` sweeps the
same leftovers of entries nobody is staging; see :mod:`tfhub_cache.cache.inventory`.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tfhub_cache.cache.layout import TMP_RE, WRITE_TMP_RE, EntryNames
from tfhub_cache.cache.revisions import list_revisions
from tfhub_cache.storage.base import Storage

log = logging.getLogger(__name__)

__all__ = ["remove_dead_leftovers", "remove_unfinished_model"]

#: Small-write temp files of live waiters exist for microseconds; only older ones are leftovers.
WRITE_TMP_AGE = 60.0


def remove_dead_leftovers(
    storage: Storage, names: EntryNames, *, own_uid: str, current_revision: Callable[[], str | None]
) -> None:
    """Under the lock: every other ``<key>.<uid>.tmp``, old small-file write and unpublished revision.

    ``current_revision`` reads the entry's current revision (never removed); it is called only when
    the entry has a revisions dir, so a first staging costs no metadata read.
    """
    for name in storage.list_root(prefix=f"{names.key}."):
        match = TMP_RE.match(name)
        if (match and match.group("uid") != own_uid) or (WRITE_TMP_RE.match(name) and _is_old(storage, name)):
            freed = storage.delete_tree(name)
            log.info("Removed leftover %s of a stager that died (%d bytes).", name, freed)
        elif name == names.revisions:
            _remove_unpublished_revisions(storage, names, current_revision())


def _remove_unpublished_revisions(storage: Storage, names: EntryNames, current_revision: str | None) -> None:
    """A revision dir without its ``<rev>.json`` was never published: a dead stager's upload."""
    for rev, listing in list_revisions(storage, names).items():
        if listing.published or listing.files == 0 or rev == current_revision:
            continue
        freed = storage.delete_tree(names.revision(rev))
        log.info("Removed unpublished revision %s of a stager that died (%d bytes).", rev, freed)


def _is_old(storage: Storage, name: str, age: float = WRITE_TMP_AGE) -> bool:
    stat = storage.stat(name)
    return stat is not None and time.time() - stat.mtime > age


def remove_unfinished_model(storage: Storage, names: EntryNames) -> None:
    """A model dir without metadata and without a model marker is a half model: remove it."""
    if storage.tree_is_nonempty(names.model):
        freed = storage.delete_tree(names.model)
        log.warning(
            "Removed incomplete %s (%d bytes) left by an interrupted stager or a temp cleaner.",
            storage.location(names.model),
            freed,
        )
