"""What the test hub serves: model and archive entries, and the names their URLs are built from."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
"""File suffixes recognised as model archives (``--root`` scan, storage URLs, Content-Type)."""

RESERVED_PREFIXES = ("/_control", "/kaggle-redirect/", "/storage/", "/archives/")
"""Path prefixes of the hub's own routes: no model may be registered below them."""


def archive_suffix(name: str) -> str:
    """Return the archive suffix of ``name`` (``.tar.gz`` by default, so odd names still look gzipped)."""
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ".tar.gz"


@dataclasses.dataclass
class Archive:
    """A served file plus the validators derived from its stat, cached until the stat changes.

    ``generation`` is bumped by every (re-)registration, so ``add_model`` always yields a new ETag even if
    the file was overwritten within the filesystem's timestamp granularity with the same size.
    ``floor_last_modified`` keeps Last-Modified strictly increasing across replacements: HTTP dates have
    one-second resolution, and a test that replaces a model twice within a second must still see a change.
    """

    file: Path
    generation: int
    floor_last_modified: int = 0
    stat_key: tuple[int, int, int, int] | None = None
    etag: str = ""
    last_modified: int = 0
    size: int = 0

    def validators(self) -> tuple[int, str, int]:
        """Return ``(size, etag, last_modified)``, re-deriving them only when the file changed."""
        st = os.stat(self.file)
        key = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        if key != self.stat_key:
            last_modified = int(st.st_mtime)
            if self.stat_key is not None or self.floor_last_modified:
                last_modified = max(last_modified, max(self.last_modified, self.floor_last_modified) + 1)
            self.stat_key = key
            self.size = st.st_size
            self.last_modified = last_modified
            self.etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ino:x}-g{self.generation}"'
        return self.size, self.etag, self.last_modified


@dataclasses.dataclass
class Model:
    path: str
    archive: Archive
    uncompressed_location: str | None
    separate_storage: bool

    @property
    def storage_path(self) -> str:
        return "/storage" + self.path + archive_suffix(self.archive.file.name)
