"""``fsync`` before a local model is published (``TFHUB_FSYNC``): every file and directory of the
new tree reaches the disk before the rename that publishes it, and the rename itself after.

A power loss cannot be simulated here, so the test watches the real system calls: ``os.fsync`` and
``os.rename`` are wrapped (the wrappers call the real ones) and the order of events is checked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tfhub_cache.cache.staging import stage
from tfhub_cache.errors import ConfigurationError
from tfhub_cache.storage import durability


@pytest.fixture
def syscalls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: Any) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{int(fd)}")))
        real_fsync(fd)

    def rename(src: Any, dst: Any) -> None:
        real_rename(src, dst)
        events.append(("rename", f"{os.fspath(src)} -> {os.fspath(dst)}"))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    return events


def test_fsync_before_publish(
    hub: Any, handle_of: Any, cache_dir: str, syscalls: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TFHUB_FSYNC", "1")
    staged = stage(handle_of("demo_v1"), cache_dir)

    final, files = staged["path"], staged["files"]
    assert final is not None and files is not None
    (publish,) = [i for i, (kind, what) in enumerate(syscalls) if kind == "rename" and what.endswith(f"-> {final}")]
    tmp = syscalls[publish][1].split(" -> ")[0]
    synced_before = {what for kind, what in syscalls[:publish] if kind == "fsync"}
    tree = {tmp} | {
        os.path.join(tmp, os.path.relpath(os.path.join(d, n), final)) for d, ds, fs in os.walk(final) for n in ds + fs
    }
    tree = {os.path.normpath(p) for p in tree}
    assert tree <= synced_before, sorted(tree - synced_before)
    assert len(tree) == files + sum(len(ds) for _, ds, _ in os.walk(final)) + 1
    assert ("fsync", cache_dir) in syscalls[publish + 1 :]  # the rename itself is made durable


def test_fsync_off(
    hub: Any, handle_of: Any, cache_dir: str, syscalls: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TFHUB_FSYNC", "0")
    stage(handle_of("demo_v1"), cache_dir)
    assert [e for e in syscalls if e[0] == "fsync"] == []


def test_fsync_default_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TFHUB_FSYNC", raising=False)
    assert durability.fsync_enabled() is durability.DEFAULT_FSYNC
    monkeypatch.setenv("TFHUB_FSYNC", "sometimes")
    with pytest.raises(ConfigurationError, match="TFHUB_FSYNC"):
        durability.fsync_enabled()


def test_fsync_tree_syncs_files_then_dirs_bottom_up(tmp_path: Path, syscalls: list[tuple[str, str]]) -> None:
    (tmp_path / "m" / "variables").mkdir(parents=True)
    (tmp_path / "m" / "saved_model.pb").write_bytes(b"x")
    (tmp_path / "m" / "variables" / "v.data").write_bytes(b"y")
    durability.fsync_tree(str(tmp_path / "m"))
    order = [what for _, what in syscalls]
    assert order.index(str(tmp_path / "m" / "variables" / "v.data")) < order.index(str(tmp_path / "m" / "variables"))
    assert order[-1] == str(tmp_path / "m")
    assert set(order) == {str(tmp_path / "m" / p) for p in ("saved_model.pb", "variables", "variables/v.data")} | {
        str(tmp_path / "m")
    }
