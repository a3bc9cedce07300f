"""Local-filesystem cache: tensorflow_hub's own layout, with O_EXCL locks and one-rename publishing.

Extracted files are written by a writer thread fed through a bounded queue, so that disk writes
overlap with decompression on the caller's thread while memory stays bounded.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import errno
import os
import queue
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

import google_crc32c

from tfhub_cache.errors import ArchiveError, CacheError, DiskFullError
from tfhub_cache.storage.base import FileRecord, ObjectStat, SinkAborted, Storage, TreeSink
from tfhub_cache.storage.durability import fsync_dir, fsync_enabled, fsync_tree

_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
#: What ``link`` fails with where hard links cannot be made (another filesystem, no link support,
#: the link limit, a filesystem that refuses them): then the bytes are copied (or written) instead.
NO_HARD_LINK_ERRNOS = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EACCES})
_QUEUE_CHUNKS = 16  # x 1 MiB chunks from the extractor: the writer's bounded share of memory


def disk_error(exc: OSError, where: str) -> CacheError:
    """Translate a write failure into a :class:`CacheError` (:class:`DiskFullError` for no space)."""
    if exc.errno in _DISK_FULL_ERRNOS:
        return DiskFullError(
            f"No space left while writing {where} ({os.strerror(exc.errno or 0)}); free space in the cache "
            "filesystem, prune the cache (tfhub-cache prune), or point cache_dir at a larger volume."
        )
    return CacheError(f"Cannot write {where}: {exc.strerror or exc}; check the cache dir's permissions and space.")


class LocalStorage(Storage):
    """A cache directory on a local (or NFS-style mounted) filesystem."""

    def __init__(self, root: str) -> None:
        super().__init__(os.path.abspath(os.path.expanduser(root)))

    def location(self, name: str = "") -> str:
        return os.path.join(self.root, name) if name else self.root

    def ensure_root(self) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"Cannot create cache dir {self.root!r}: {exc.strerror}; choose a writable cache_dir "
                "(argument, connection extra, TFHUB_CACHE_DIR or [tfhub] cache_dir)."
            ) from exc
        if not os.path.isdir(self.root) or not os.access(self.root, os.W_OK | os.X_OK):
            raise CacheError(
                f"Cache dir {self.root!r} is not a writable directory; fix its permissions or choose another "
                "cache_dir (argument, connection extra, TFHUB_CACHE_DIR or [tfhub] cache_dir)."
            )

    def check_exists(self) -> None:
        if not os.path.isdir(self.root):
            raise CacheError(
                f"Cache dir {self.root!r} does not exist; check the cache_dir for a typo "
                "(argument, connection extra, TFHUB_CACHE_DIR or [tfhub] cache_dir)."
            )

    def read_bytes(self, name: str) -> bytes | None:
        try:
            with open(self.location(name), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write_bytes(self, name: str, data: bytes) -> None:
        path = self.location(name)
        tmp = f"{path}.tmp{uuid.uuid4().hex}"  # tensorflow_hub's atomic-write naming
        durable = fsync_enabled()
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                if durable:  # metadata is a switch: its content must be on disk before its name
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            if durable:
                fsync_dir(os.path.dirname(path))
        except OSError as exc:
            _silent_unlink(tmp)
            raise disk_error(exc, path) from exc

    def write_bytes_if(self, name: str, data: bytes, *, token: str | None) -> str | None:
        """Compare-and-replace; callers hold the entry's lock, which is what serialises writers here."""
        current = self.stat(name)
        if (current.token if current is not None else None) != token:
            return None
        self.write_bytes(name, data)
        st = self.stat(name)
        return st.token if st is not None else None

    def create_exclusive(self, name: str, data: bytes) -> str | None:
        """Create ``name`` with ``data`` only if absent, and never visible without its content.

        The content goes to a private temp file first, which is then hard-linked to ``name``
        (``link`` fails if the name exists, like ``O_EXCL``). A stager killed at any instant
        therefore leaves either no lock or a complete one, whose ``host.pid`` lets the next
        stager see at once that it is dead; an empty lock would stall it for ``lock_timeout``.
        Filesystems without hard links fall back to ``O_EXCL`` plus a write.
        """
        path = self.location(name)
        tmp = f"{path}.tmp{uuid.uuid4().hex}"
        try:
            if os.path.dirname(name):  # a record below the root (a hold): its directory may not exist yet
                os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            os.link(tmp, path)
        except (FileExistsError, FileNotFoundError):
            return None  # taken, or our temp file was swept as a leftover: the caller tries again
        except OSError as exc:
            if exc.errno not in NO_HARD_LINK_ERRNOS:
                raise disk_error(exc, path) from exc
            return self._create_exclusive_plain(path, data)
        finally:
            _silent_unlink(tmp)
        return _token(os.stat(path))

    def _create_exclusive_plain(self, path: str, data: bytes) -> str | None:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        try:
            os.write(fd, data)
        except OSError as exc:
            os.close(fd)
            _silent_unlink(path)
            raise disk_error(exc, path) from exc
        os.close(fd)
        return _token(os.stat(path))

    def refresh_lease(self, name: str, token: str, data: bytes) -> str | None:
        if self.read_bytes(name) != data:
            return None
        try:
            os.utime(self.location(name))
            return _token(os.stat(self.location(name)))
        except FileNotFoundError:
            return None

    def delete(self, name: str, *, token: str | None = None) -> bool:
        path = self.location(name)
        if token is not None:
            current = self.stat(name)
            if current is None or current.token != token:
                return False
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False

    def stat(self, name: str) -> ObjectStat | None:
        try:
            st = os.stat(self.location(name))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return ObjectStat(size=st.st_size, mtime=st.st_mtime, token=_token(st))

    def touch(self, name: str) -> None:
        try:
            os.utime(self.location(name))
        except OSError:
            pass  # missing, or a read-only cache shared with us: usage tracking is best effort

    def open_read(self, name: str) -> BinaryIO:
        return open(self.location(name), "rb")

    def has_file(self, name: str) -> bool:
        return os.path.isfile(self.location(name))

    def tree_is_nonempty(self, name: str) -> bool:
        try:
            with os.scandir(self.location(name)) as it:
                return any(True for _ in it)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def list_tree(self, name: str) -> Iterator[tuple[str, int]]:
        top = self.location(name)
        for dirpath, _dirs, files in os.walk(top):
            for fname in files:
                full = os.path.join(dirpath, fname)
                try:
                    size = os.lstat(full).st_size
                except FileNotFoundError:
                    continue
                yield os.path.relpath(full, top).replace(os.sep, "/"), size

    def delete_tree(self, name: str, *, tmp: str | None = None) -> int:
        """With ``tmp``, a directory is first renamed to ``tmp``: it leaves its name in one step."""
        path = self.location(name)
        if os.path.isfile(path) or os.path.islink(path):
            size = os.lstat(path).st_size
            _silent_unlink(path)
            return size
        if not os.path.isdir(path):
            return 0
        if tmp is not None:
            os.rename(path, self.location(tmp))
            name, path = tmp, self.location(tmp)
        freed = sum(size for _, size in self.list_tree(name))
        shutil.rmtree(path, ignore_errors=True)
        return freed

    def list_root(self, prefix: str = "") -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.root) if n.startswith(prefix))
        except FileNotFoundError:
            return []

    def open_sink(self, final: str, tmp: str, *, replace: bool = False) -> TreeSink:
        return LocalTreeSink(self.location(final), self.location(tmp))

    def clone_tree(self, src: str, dst: str, tmp: str) -> None:
        """Hard-link every file of ``src`` under ``tmp``, then rename ``tmp`` to ``dst``.

        Hard links share the inodes, so the clone costs no bytes and holds exactly the same content;
        deleting either name later leaves the other intact. Where links are refused (another
        filesystem type, no link support) the files are copied instead.
        """
        source, staging, final = self.location(src), self.location(tmp), self.location(dst)
        try:
            shutil.copytree(source, staging, symlinks=False, copy_function=link_or_copy)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            if fsync_enabled():
                fsync_tree(staging)
            os.rename(staging, final)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise disk_error(exc, final) from exc

    def publish_view(self, view: str, revision: str, tmp: str) -> None:
        """Point the symlink ``view`` at ``revision`` with one rename (relative, so the cache can move)."""
        path, link = self.location(view), self.location(tmp)
        target = os.path.relpath(self.location(revision), os.path.dirname(path))
        try:
            _silent_unlink(link)
            os.symlink(target, link)
            if os.path.isdir(path) and not os.path.islink(path):
                # A model dir of an older release (or of tensorflow_hub) whose files were cloned into a
                # revision already: swap it for the link in one step, then drop the old names.
                shutil.rmtree(exchange_or_rename(link, path), ignore_errors=True)
            else:
                os.replace(link, path)
            if fsync_enabled():
                fsync_dir(os.path.dirname(path))
        except OSError as exc:
            _silent_unlink(link)
            raise disk_error(exc, path) from exc

    def view_target(self, view: str) -> str | None:
        path = self.location(view)
        try:
            target = os.readlink(path)
        except OSError:
            return None
        full = os.path.normpath(os.path.join(os.path.dirname(path), target))
        return os.path.relpath(full, self.root).replace(os.sep, "/")

    def publish_tree(
        self, name: str, tmp: str, source: Storage, rels: Sequence[str], *, replaced: str | None = None
    ) -> None:
        """Build the tree under ``tmp``, then put it in ``name``'s place in one step (:func:`exchange_or_rename`).

        Files of a local ``source`` are hard links when both are on one filesystem (no copy, no
        space; hence never modify a published file in place), copies otherwise, and its empty
        directories are kept; a ``source`` elsewhere (``gs://``) is downloaded file by file.
        """
        final, staging = self.location(name), self.location(tmp)
        try:
            os.makedirs(staging)
            link = isinstance(source, LocalStorage)
            if isinstance(source, LocalStorage):  # keep empty directories (assets/) as they are
                top = source.location()
                for dirpath, dirnames, _files in os.walk(top):
                    for d in dirnames:
                        rel_dir = os.path.relpath(os.path.join(dirpath, d), top)
                        os.makedirs(os.path.join(staging, rel_dir), exist_ok=True)
            for rel in rels:
                dst = os.path.join(staging, *rel.split("/"))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                if isinstance(source, LocalStorage):
                    link = link_or_copy(source.location(rel), dst, link=link)
                    continue
                with source.open_read(rel) as src, open(dst, "wb") as out:
                    shutil.copyfileobj(src, out, 8 << 20)
            if os.path.isdir(final):
                old = exchange_or_rename(staging, final)
                if replaced is None:
                    shutil.rmtree(old, ignore_errors=True)
                else:  # kept for readers that still have it open; its mtime says when it was replaced
                    os.rename(old, self.location(replaced))
                    os.utime(self.location(replaced))
            else:
                os.rename(staging, final)
        except OSError as exc:
            raise disk_error(exc, final) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)


class LocalTreeSink(TreeSink):
    """Writes into ``<final>.<uid>.tmp`` on a writer thread, then renames it to ``final``."""

    def __init__(self, final: str, tmp: str) -> None:
        self.final = final
        self.tmp = tmp
        self._queue: queue.Queue[tuple[str, object] | None] = queue.Queue(maxsize=_QUEUE_CHUNKS)
        self._error: BaseException | None = None
        self._manifest: dict[str, FileRecord] = {}
        self._thread: threading.Thread | None = None
        self._finished = False
        try:
            os.makedirs(tmp)
        except OSError as exc:
            raise disk_error(exc, tmp) from exc

    # -- producer side (extractor thread) ---------------------------------------------------------
    def add_dir(self, relpath: str) -> None:
        self._put(("dir", relpath))

    def add_file(self, relpath: str, size: int, chunks: Iterable[bytes]) -> None:
        self._put(("open", relpath))
        for chunk in chunks:
            self._put(("data", chunk))
        self._put(("close", size))

    def finish(self) -> dict[str, FileRecord]:
        if not self._finished:
            self._finished = True
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
        if self._error is not None:
            raise self._error
        return dict(self._manifest)

    def commit(self, *, replace: bool = False) -> bool:
        self.finish()
        try:
            os.makedirs(os.path.dirname(self.final), exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, self.final) from exc
        durable = fsync_enabled()
        if durable:
            fsync_tree(self.tmp)  # data and entries on disk before the name says "complete"
        published = self._publish(replace=replace)
        if published and durable:
            fsync_dir(os.path.dirname(self.final))  # the rename itself
        return published

    def _publish(self, *, replace: bool) -> bool:
        if replace and os.path.isdir(self.final):
            shutil.rmtree(exchange_or_rename(self.tmp, self.final), ignore_errors=True)
            return True
        try:
            os.rename(self.tmp, self.final)  # replaces an *empty* final dir, fails on a non-empty one
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                self.abort()
                return False
            raise disk_error(exc, self.final) from exc
        return True

    def abort(self) -> None:
        if not self._finished:
            self._finished = True
            if self._thread is not None:
                self._error = self._error or SinkAborted()
                self._queue.put(None)
                self._thread.join()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _put(self, item: tuple[str, object]) -> None:
        if self._error is not None:
            raise self._error
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tfhub-writer", daemon=True)
            self._thread.start()
        self._queue.put(item)

    # -- consumer side (writer thread) ----------------------------------------------------------
    def _run(self) -> None:
        handle: BinaryIO | None = None
        relpath = ""
        crc = google_crc32c.Checksum()
        written = 0
        while True:
            item = self._queue.get()
            if item is None:
                break
            if self._error is not None:
                continue  # drain until the sentinel so the producer never blocks forever
            kind, value = item
            try:
                if kind == "dir":
                    os.makedirs(os.path.join(self.tmp, str(value)), exist_ok=True)
                elif kind == "open":
                    relpath = str(value)
                    path = os.path.join(self.tmp, relpath)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    handle = open(path, "wb")
                    crc = google_crc32c.Checksum()
                    written = 0
                elif kind == "data":
                    assert handle is not None
                    data = value if isinstance(value, bytes | bytearray | memoryview) else b""
                    handle.write(data)
                    crc.update(bytes(data))
                    written += len(data)
                elif kind == "close":
                    assert handle is not None
                    handle.close()
                    handle = None
                    crc_b64 = base64.b64encode(crc.digest()).decode("ascii")
                    self._manifest[relpath] = FileRecord(size=written, crc32c=crc_b64)
            except OSError as exc:
                member = str(value) if kind == "dir" else relpath
                self._error = _name_error(exc, member) or disk_error(exc, os.path.join(self.final, member))
            except BaseException as exc:
                self._error = exc
        if handle is not None:
            handle.close()


def _name_error(exc: OSError, member: str) -> ArchiveError | None:
    """A path the filesystem refuses as too long is the archive's fault: say which member, not "space"."""
    if exc.errno != errno.ENAMETOOLONG:
        return None
    return ArchiveError(
        f"Archive member {member!r} makes a path too long for the cache filesystem ({os.strerror(exc.errno)}); "
        "repack the archive with shorter names, or use a cache_dir with a shorter path."
    )


def _token(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns}-{st.st_ino}"


def link_or_copy(src: str, dst: str, *, link: bool = True) -> bool:
    """Hard-link ``src`` to ``dst`` (with ``link``), else copy it; True when it was linked.

    A caller that copies many files passes the last answer back as ``link``, so that after the
    first refusal (:data:`NO_HARD_LINK_ERRNOS`) the others are copied without trying again.
    """
    if link:
        try:
            os.link(src, dst)
            return True
        except OSError as exc:
            if exc.errno not in NO_HARD_LINK_ERRNOS:
                raise
    shutil.copy2(src, dst)
    return False


def _silent_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


_RENAME_EXCHANGE = 2
_libc: ctypes.CDLL | None = None


def exchange_or_rename(new: str, final: str) -> str:
    """Put the tree at ``new`` in the place of the existing ``final``; return the path now holding the old one.

    Atomic where Linux ``renameat2(RENAME_EXCHANGE)`` works: a reader resolving ``final`` sees the
    complete old tree or the complete new one. Elsewhere two renames, with a short moment without
    ``final``. The caller removes the returned path.
    """
    if _exchange(new, final):
        return new
    old = f"{new}.old"
    os.rename(final, old)
    os.rename(new, final)
    return old


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False when unsupported.

    This is what lets a refresh replace a model in place so that any reader resolving the path
    sees either the complete old tree or the complete new one, never a moment without one.
    """
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = _libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0
