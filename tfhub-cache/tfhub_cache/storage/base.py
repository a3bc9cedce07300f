"""The storage interface the staging flow, the lock and the lifecycle tools are written against.

Names passed to a :class:`Storage` are relative to its root (the cache dir) and use ``/``. The
interface is deliberately small: a few small-object primitives (enough for descriptor, metadata
and lock files), a few tree operations, and a :class:`TreeSink` that receives an archive's members
as they stream out of the extractor and makes them visible all at once (or as close to it as the
backend allows) on :meth:`TreeSink.commit`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

#: Bytes per chunk handed from an archive source through the extractor to a sink (and per read).
CHUNK_SIZE = 1 << 20

# Model files that mark a directory as a SavedModel; written last on backends without atomic
# publish so that a tensorflow_hub reader of a partial tree gets a load error, not a partial model.
MODEL_MARKERS = ("saved_model.pb", "saved_model.pbtxt", "tfhub_module.pb")


@dataclass(frozen=True)
class ObjectStat:
    """What a backend knows about one object without reading it.

    ``token`` changes whenever the object is rewritten (local: mtime_ns and inode; GCS: generation),
    which is what lock leases and compare-and-swap deletes rely on.
    """

    size: int
    mtime: float
    token: str


@dataclass(frozen=True)
class FileRecord:
    """One extracted file, as recorded in the manifest: size and CRC32C (base64, like GCS's)."""

    size: int
    crc32c: str


class SinkAborted(Exception):
    """A sink was aborted while a transfer was running: stops its workers, never escapes to users."""


class TreeSink(abc.ABC):
    """Receives a model tree file by file and publishes it at ``final`` on commit."""

    @abc.abstractmethod
    def add_dir(self, relpath: str) -> None:
        """Create an (empty) directory; harmless if it exists."""

    @abc.abstractmethod
    def add_file(self, relpath: str, size: int, chunks: Iterable[bytes]) -> None:
        """Consume ``chunks`` (``size`` bytes in all) as the content of ``relpath``.

        Implementations may hand chunks to worker threads and return before they are durable;
        errors of those workers surface at the latest from :meth:`finish`.
        """

    @abc.abstractmethod
    def finish(self) -> dict[str, FileRecord]:
        """Wait for every pending write and return the manifest (relpath -> record)."""

    @abc.abstractmethod
    def commit(self, *, replace: bool = False) -> bool:
        """Make the tree visible at ``final``.

        Returns False when ``final`` already holds a model and ``replace`` is False (someone else
        published first; the caller discards its copy and uses theirs).
        """

    @abc.abstractmethod
    def abort(self) -> None:
        """Remove everything this sink wrote. Safe to call more than once and after commit."""


class Storage(abc.ABC):
    """A cache root: the local filesystem or a ``gs://bucket/prefix``."""

    def __init__(self, root: str) -> None:
        self.root = root

    # -- names ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def location(self, name: str = "") -> str:
        """The user-visible location of ``name``: an absolute local path or a ``gs://`` URL."""

    @abc.abstractmethod
    def ensure_root(self) -> None:
        """Create the root if needed; raise :class:`CacheError` if it cannot be written."""

    def check_exists(self) -> None:
        """Raise :class:`CacheError` unless the root exists and can be read.

        For what only reads a cache (``ls``, ``verify``, ``prune``): creating the root there, or
        reporting an empty cache, would hide a typo in the cache dir. By default the same check as
        :meth:`ensure_root` (a ``gs://`` root needs its bucket, which is never created).
        """
        self.ensure_root()

    # -- small objects -------------------------------------------------------------------------
    @abc.abstractmethod
    def read_bytes(self, name: str) -> bytes | None:
        """Content of ``name``, or None when it does not exist."""

    @abc.abstractmethod
    def write_bytes(self, name: str, data: bytes) -> None:
        """Replace ``name`` atomically: a reader sees the old or the new content, never a part."""

    @abc.abstractmethod
    def write_bytes_if(self, name: str, data: bytes, *, token: str | None) -> str | None:
        """Replace ``name`` only if it still has ``token`` (None: only if absent); return the new token.

        Returns None when the precondition failed. This is the one switch between revisions: the
        entry metadata is rewritten with it, so two writers can never both believe they switched.
        """

    @abc.abstractmethod
    def create_exclusive(self, name: str, data: bytes) -> str | None:
        """Create ``name`` only if absent; return its token, or None if it already existed.

        Parent directories of a name below the root are created as needed.
        """

    @abc.abstractmethod
    def refresh_lease(self, name: str, token: str, data: bytes) -> str | None:
        """Rewrite ``name`` (same content) if it still has ``token``; return the new token or None."""

    @abc.abstractmethod
    def delete(self, name: str, *, token: str | None = None) -> bool:
        """Delete ``name`` (only if it still has ``token`` when given). True if something was deleted."""

    @abc.abstractmethod
    def stat(self, name: str) -> ObjectStat | None:
        """Size, modification time and change token of ``name``, or None when missing."""

    @abc.abstractmethod
    def touch(self, name: str) -> None:
        """Record that ``name`` was used now (its mtime for :meth:`stat`); missing names are ignored."""

    @abc.abstractmethod
    def open_read(self, name: str) -> BinaryIO:
        """Open ``name`` for streaming reads (raises FileNotFoundError when missing)."""

    # -- trees ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def has_file(self, name: str) -> bool:
        """True when the single object/file ``name`` exists."""

    @abc.abstractmethod
    def tree_is_nonempty(self, name: str) -> bool:
        """True when the directory/prefix ``name`` holds at least one file (tensorflow_hub's hit test)."""

    @abc.abstractmethod
    def list_tree(self, name: str) -> Iterator[tuple[str, int]]:
        """Yield ``(relpath, size)`` of every file below ``name``."""

    @abc.abstractmethod
    def delete_tree(self, name: str, *, tmp: str | None = None) -> int:
        """Delete ``name`` and everything below it; return the bytes freed (0 when missing).

        A reader never finds a model marker over a tree whose files are going: GCS deletes the markers
        first; local deletes in place, or, given ``tmp``, first renames the tree there (it leaves its
        name in one step).
        """

    @abc.abstractmethod
    def list_root(self, prefix: str = "") -> list[str]:
        """Names directly under the root that start with ``prefix`` (directories without a slash)."""

    @abc.abstractmethod
    def open_sink(self, final: str, tmp: str, *, replace: bool = False) -> TreeSink:
        """A sink that writes a tree via the temporary name ``tmp`` and publishes it at ``final``."""

    @abc.abstractmethod
    def publish_tree(
        self, name: str, tmp: str, source: Storage, rels: Sequence[str], *, replaced: str | None = None
    ) -> None:
        """Publish the files ``rels`` of ``source`` (any backend) as the tree ``name``, replacing what is there.

        A reader of ``name`` never loads a partial or mixed model. Local: the tree is built under
        ``tmp`` and exchanged (or renamed) into place in one step. GCS: old model markers are deleted
        first, then the files are copied (server side when ``source`` is on GCS), objects the new
        tree lacks are deleted, and the markers are copied last. ``replaced`` (local): where the tree
        that was in place goes instead of being deleted, for readers that still have it open (the
        caller removes it later); GCS objects are rewritten in place, markers first.
        """

    @abc.abstractmethod
    def clone_tree(self, src: str, dst: str, tmp: str) -> None:
        """Publish a copy of the tree ``src`` at ``dst`` (absent before), without moving bytes if possible.

        Local: hard links built under ``tmp`` and renamed into place; GCS: server-side copies with
        the model markers last. Used to adopt a tree in place as an immutable revision.
        """

    @abc.abstractmethod
    def publish_view(self, view: str, revision: str, tmp: str) -> None:
        """Make ``view`` (where tensorflow_hub looks) show the complete tree ``revision``.

        Local: ``view`` becomes a symlink to ``revision``, switched by one rename (a real directory
        left by an older release is exchanged atomically; its files must already be in a revision).
        GCS: the objects under ``view`` are made equal to ``revision`` by server-side copies, markers
        removed first and copied last, so a reader never finds old markers over new files.
        """

    def view_target(self, view: str) -> str | None:
        """The revision name ``view`` points at, when the backend can tell (local symlinks); else None."""
        return None
