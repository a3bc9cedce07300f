"""Durability of a published local model: ``fsync`` its files and directories before the rename.

A rename is atomic but not durable by itself: after a power loss the rename may have reached the
disk while the files' data did not, leaving zero-length files behind a name that says "complete".
Flushing every file, then every directory (bottom-up, so entries reach the disk after what they
name), then publishing, then flushing the parent directory (so the rename itself persists) closes
that window. Whether it runs is ``TFHUB_FSYNC`` (``1``/``0``); the default and its measured cost
are in ``docs/guarantees.md`` ("Reliability: what is guaranteed, and the limits") and ``benchmarks/README.md``.
"""

from __future__ import annotations

import os

from tfhub_cache import settings
from tfhub_cache.settings import DEFAULT_FSYNC

__all__ = ["DEFAULT_FSYNC", "fsync_dir", "fsync_enabled", "fsync_file", "fsync_tree"]


def fsync_enabled() -> bool:
    """``TFHUB_FSYNC``: ``1``/``true`` forces fsync before publishing, ``0``/``false`` turns it off."""
    return settings.fsync()


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Flush a directory's entries (names created or renamed in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """Flush every file under ``path``, then every directory bottom-up, ``path`` itself last."""
    for dirpath, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)
