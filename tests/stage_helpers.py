"""Helpers for tests that stage from the loopback hub and then look at the cache on disk.

Shared by the modules that test one part of staging each (``test_transfer``, ``test_extract``,
``test_locks``, ``test_faults``, ``test_inventory``, ``test_cli``, ``test_refresh``, ...). Fixtures
built on these live in the ``conftest.py`` files; this module holds plain functions and types only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c

from tfhub_cache.cache.layout import EntryNames
from tfhub_cache.handles import cache_key
from tfhub_cache.retry import RetryPolicy

PY = sys.executable
#: the ``staged_models`` fixture: model name -> what staging it returned
StagedModels = dict[str, dict[str, Any]]
FAST = RetryPolicy(attempts=5, backoff=0.01, max_backoff=0.05)
MEDIUM = "/google/medium/1"  # ~8 MB of random float32 weights: big enough to cut, stall and kill mid-way


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def archive_records(hub: Any, path: str = MEDIUM) -> list[dict[str, Any]]:
    """Request records of the archive hop (the storage listener's /storage/... URL) of ``path``."""
    return [r for r in hub.stats()["recent"] if r["path"].startswith("/storage" + path)]


def entry_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def assert_nothing_left(cache: Path) -> None:
    """A failed staging leaves no model dir, metadata, temp dir or lock behind."""
    left = [n for n in entry_files(cache) if not n.endswith(".descriptor.txt")]
    assert left == [], left


def manifest_of_dir(model_dir: Path) -> dict[str, dict[str, Any]]:
    """{relpath: {size, crc32c}} of a directory tree, in the meta.json manifest's format."""
    out = {}
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            crc = google_crc32c.Checksum(path.read_bytes())
            rel = path.relative_to(model_dir).as_posix()
            out[rel] = {"size": path.stat().st_size, "crc32c": base64.b64encode(crc.digest()).decode()}
    return out


def assert_entry_complete(cache: Path, handle: str, reference: dict[str, dict[str, Any]]) -> None:
    """The staged entry has metadata and exactly the reference files, byte for byte (CRC32C)."""
    key = cache_key(handle)
    meta = json.loads((cache / f"{key}.meta.json").read_text())
    assert meta["manifest"] == reference
    assert manifest_of_dir(cache / key) == reference  # tensorflow_hub's view
    assert manifest_of_dir(cache / f"{key}.revisions" / meta["revision"]) == reference


NAMES = ("demo_v1", "small_a", "small_b", "demo_v2")  # oldest use first in ``staged_models``


def used(cache_dir: str, result: Mapping[str, Any], when: float) -> None:
    meta = Path(cache_dir, EntryNames(result["cache_key"]).meta)
    os.utime(meta, (when, when))


def run_py(code: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run ``code`` in a fresh interpreter (``env`` on top of ours); its stdout, or fail with its stderr."""
    proc = subprocess.run(
        [PY, "-c", textwrap.dedent(code)],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@dataclass(frozen=True)
class Version:
    """One upstream version of the versioned test model: its archive and the files of its tree."""

    tag: str
    archive: Path
    files: dict[str, bytes]  # relpath -> content of the model tree

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.archive.read_bytes()).hexdigest()
