"""What an entry's ``<key>.revisions/`` holds: one listing, read the same way by every caller.

A revision is *published* once its ``<rev>.json`` exists (written after its tree was complete);
a revision dir without it is an upload that never finished. Staging, ``ls``/``verify``/``prune``
and export all read revisions through :func:`list_revisions`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tfhub_cache.cache.layout import REVISION_RE, EntryNames
from tfhub_cache.storage.base import Storage

__all__ = ["RevisionListing", "list_revisions", "published_revisions"]


@dataclass
class RevisionListing:
    """One revision of an entry as listed: its tree's size and files, its metadata file's size."""

    rev: str
    size: int = 0
    files: int = 0
    #: Size of ``<rev>.json``; None when it does not exist (the revision was never published).
    meta_bytes: int | None = None

    @property
    def published(self) -> bool:
        return self.meta_bytes is not None


def list_revisions(storage: Storage, names: EntryNames) -> dict[str, RevisionListing]:
    """Every revision dir and every ``<rev>.json`` of an entry, by revision id (sorted)."""
    found: dict[str, RevisionListing] = {}
    for rel, size in storage.list_tree(names.revisions):
        head, sep, _rest = rel.partition("/")
        if sep:
            listing = found.setdefault(head, RevisionListing(head))
            listing.size += size
            listing.files += 1
        elif rel.endswith(".json") and REVISION_RE.match(rel[: -len(".json")]):
            found.setdefault(rel[: -len(".json")], RevisionListing(rel[: -len(".json")])).meta_bytes = size
    return dict(sorted(found.items()))


def published_revisions(storage: Storage, names: EntryNames) -> list[str]:
    """Ids of the revisions of an entry that have their metadata written (published ones), sorted."""
    return [rev for rev, listing in list_revisions(storage, names).items() if listing.published]
