"""Refresh and offline mode of the core stager, against the loopback hub.

What the issue promises: ``refresh="never"`` costs no request for a cached model; ``if_changed``
sends one conditional request and downloads nothing when unchanged, and exactly one archive
when upstream changed, swapping the new tree in so that readers see one complete version at a
time; offline mode never touches the network. The two model versions carry an
``assets/version.txt`` ("v1"/"v2") on top of their (different) TensorFlow variables, so every file
a reader sees can be attributed to a version.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from stage_helpers import Version

from tfhub_cache.cache.inventory import verify
from tfhub_cache.cache.layout import TMP_RE, EntryNames
from tfhub_cache.cache.staging import stage
from tfhub_cache.errors import ChecksumMismatchError, OfflineError
from tfhub_cache.storage.local import LocalStorage

MODEL_PATH = "/google/versioned/1"


@pytest.fixture
def handle(hub: Any, versions: dict[str, Version]) -> str:
    """The versioned model, serving v1 (re-registered, so every test starts from a fresh ETag)."""
    url: str = hub.add_model(MODEL_PATH, versions["v1"].archive)
    hub.reset_stats()
    return url


def counters(hub: Any) -> dict[str, int]:
    models: dict[str, dict[str, int]] = hub.stats()["models"]
    return models.get(MODEL_PATH, {})


def tree(path: str) -> dict[str, bytes]:
    root = Path(path)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def meta_of(cache_dir: str, result: Mapping[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(cache_dir, EntryNames(result["cache_key"]).meta).read_bytes())
    return data


def rewrite_meta(cache_dir: str, result: Mapping[str, Any], **changes: Any) -> None:
    meta = meta_of(cache_dir, result)
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    Path(cache_dir, EntryNames(result["cache_key"]).meta).write_text(json.dumps(meta))


# -- refresh=never / if_changed / always ---------------------------------------------------------------


def test_never_serves_a_cached_model_without_any_request(hub: Any, handle: str, cache_dir: str) -> None:
    first = stage(handle, cache_dir)
    hub.reset_stats()

    again = stage(handle, cache_dir, refresh="never")

    assert hub.stats()["requests"] == 0
    assert (again["downloaded"], again["refreshed"]) == (False, False)
    assert again["path"] == first["path"] and again["sha256"] == first["sha256"]


def test_if_changed_sends_one_conditional_request_and_downloads_nothing_when_unchanged(
    hub: Any, handle: str, cache_dir: str, versions: dict[str, Version]
) -> None:
    first = stage(handle, cache_dir)
    assert first["path"] is not None
    rewrite_meta(cache_dir, first, checked_at="2000-01-01T00:00:00+00:00")
    inode = os.stat(first["path"]).st_ino
    hub.reset_stats()

    result = stage(handle, cache_dir, refresh="if_changed")
    assert result["path"] is not None

    c = counters(hub)
    assert (c["compressed"], c["not_modified"], c["archive_full"], c["archive_range"]) == (1, 1, 0, 0)
    assert c["bytes_sent"] == 0
    archive_hops = [r for r in hub.records() if r["path"].startswith("/storage/")]
    assert [r["headers"].get("If-None-Match") for r in archive_hops] == [first["etag"]]
    assert (result["downloaded"], result["refreshed"]) == (False, False)
    assert result["staged_at"] == first["staged_at"] and result["etag"] == first["etag"]
    assert result["checked_at"] != "2000-01-01T00:00:00+00:00"
    assert meta_of(cache_dir, first)["checked_at"] == result["checked_at"]
    assert os.stat(first["path"]).st_ino == inode  # the tree was not touched
    assert tree(result["path"]) == versions["v1"].files


def test_if_changed_falls_back_to_if_modified_since(hub: Any, handle: str, cache_dir: str) -> None:
    first = stage(handle, cache_dir)
    rewrite_meta(cache_dir, first, etag=None)  # e.g. a server that sends only Last-Modified
    hub.reset_stats()

    result = stage(handle, cache_dir, refresh="if_changed")

    (hop,) = [r for r in hub.records() if r["path"].startswith("/storage/")]
    assert "If-None-Match" not in hop["headers"]
    assert hop["headers"]["If-Modified-Since"] == first["last_modified"]
    assert counters(hub)["not_modified"] == 1 and counters(hub)["archive_full"] == 0
    assert result["downloaded"] is False


def test_if_changed_downloads_once_after_upstream_change_and_serves_the_new_model(
    hub: Any, handle: str, cache_dir: str, versions: dict[str, Version]
) -> None:
    first = stage(handle, cache_dir)
    assert first["path"] is not None and first["cache_key"] is not None
    assert tree(first["path"]) == versions["v1"].files
    hub.add_model(MODEL_PATH, versions["v2"].archive)  # upstream re-publishes: new ETag
    hub.reset_stats()

    result = stage(handle, cache_dir, refresh="if_changed")
    assert result["path"] is not None

    c = counters(hub)
    assert (c["compressed"], c["archive_full"], c["not_modified"]) == (1, 1, 0)
    assert (result["downloaded"], result["refreshed"]) == (True, True)
    assert result["path"] != first["path"] and result["revision"] != first["revision"]  # a new revision
    assert os.path.realpath(Path(cache_dir, first["cache_key"])) == result["path"]  # what hub.load(handle) finds
    assert tree(result["path"]) == versions["v2"].files
    assert tree(first["path"]) == versions["v1"].files  # the old path still means v1
    assert result["sha256"] == versions["v2"].sha256 != first["sha256"]
    assert result["etag"] != first["etag"] and meta_of(cache_dir, result)["etag"] == result["etag"]
    assert not [n for n in os.listdir(cache_dir) if TMP_RE.match(n)]  # no tmp tree left behind
    assert verify(LocalStorage(cache_dir), handle)["ok"]

    hub.reset_stats()
    again = stage(handle, cache_dir, refresh="if_changed")  # the new validators were recorded
    assert (counters(hub)["not_modified"], counters(hub)["archive_full"]) == (1, 0)
    assert again["refreshed"] is False


def test_always_redownloads_without_validators(hub: Any, handle: str, cache_dir: str) -> None:
    first = stage(handle, cache_dir)
    hub.reset_stats()

    result = stage(handle, cache_dir, refresh="always")

    (hop,) = [r for r in hub.records() if r["path"].startswith("/storage/")]
    assert "If-None-Match" not in hop["headers"] and "If-Modified-Since" not in hop["headers"]
    assert counters(hub)["archive_full"] == 1
    # The same archive again: downloaded, but it is the revision we have (same path, nothing replaced).
    assert (result["downloaded"], result["refreshed"]) == (True, False)
    assert (result["path"], result["revision"]) == (first["path"], first["revision"])


def test_if_changed_checks_the_pin_when_upstream_is_unchanged(hub: Any, handle: str, cache_dir: str) -> None:
    stage(handle, cache_dir)
    with pytest.raises(ChecksumMismatchError):  # as refresh="never" does for the same cached model
        stage(handle, cache_dir, sha256="0" * 64, refresh="if_changed")


# -- the switch of tensorflow_hub's view: one complete version at a time -------------------------------


class Snapshot:
    """One reader pass over the model dir, opened once and read relative to that directory."""

    def __init__(self, files: dict[str, bytes], retired: bool) -> None:
        self.files = files
        self.retired = retired  # the tree was removed while we read it (the old tree after a swap)

    def versions(self, known: dict[str, Version]) -> set[str]:
        """Versions that every file read is consistent with (empty: a mix, or a file of neither)."""
        tags = set(known)
        for rel, data in self.files.items():
            tags &= {t for t, v in known.items() if v.files.get(rel) == data}
        return tags


def read_snapshot(dir_fd: int, path: str) -> Snapshot:
    """Read every file below ``dir_fd``; ``retired`` when that dir is no longer ``path`` (switched away or removed).

    ``path`` is the real directory the reader opened (a view symlink resolved at open time).
    """
    files: dict[str, bytes] = {}
    retired = False
    for dirpath, _dirs, names, fd in os.fwalk(".", dir_fd=dir_fd):
        for name in names:
            try:
                f = os.open(name, os.O_RDONLY, dir_fd=fd)
            except FileNotFoundError:
                retired = True
                continue
            with os.fdopen(f, "rb") as handle:
                files[os.path.normpath(os.path.join(dirpath, name))] = handle.read()
    moved = os.readlink(f"/proc/self/fd/{dir_fd}") != path
    return Snapshot(files, retired or moved or os.fstat(dir_fd).st_nlink == 0)


def test_readers_never_see_a_mixed_tree_during_swaps(
    hub: Any, handle: str, cache_dir: str, versions: dict[str, Version]
) -> None:
    """Readers of tensorflow_hub's view ``<cache>/<key>`` (a symlink switched by one rename)."""
    key = stage(handle, cache_dir)["cache_key"]
    assert key is not None
    path = os.path.join(cache_dir, key)
    stop = threading.Event()
    passes = threading.Condition()
    seen: list[tuple[frozenset[str], bool, int]] = []  # (versions, retired, files read)
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                problems.append("the model path did not exist for a moment")
                continue
            try:
                snap = read_snapshot(fd, os.path.realpath(path))
            finally:
                os.close(fd)
            tags = snap.versions(versions)
            if not tags:
                problems.append(f"mixed or foreign files: {sorted(snap.files)}")
            elif not snap.retired and set(snap.files) != set(versions[min(tags)].files):
                problems.append(f"incomplete tree: {sorted(snap.files)}")
            with passes:
                seen.append((frozenset(tags), snap.retired, len(snap.files)))
                passes.notify_all()

    def wait_for_pass_of(tag: str) -> None:
        """Block until the reader completed a pass that saw exactly ``tag`` (so each swap is observed)."""
        with passes:
            start = len(seen)
            assert passes.wait_for(
                lambda: any(t == {tag} and not r for t, r, _ in seen[start:]) or bool(problems), timeout=60
            )

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        wait_for_pass_of("v1")
        for tag in ("v2", "v1", "v2", "v1", "v2", "v1"):
            hub.add_model(MODEL_PATH, versions[tag].archive)
            result = stage(handle, cache_dir, refresh="if_changed")
            assert result["refreshed"] is True
            wait_for_pass_of(tag)
    finally:
        stop.set()
        thread.join(timeout=30)

    assert problems == []
    complete = [t for t, retired, _ in seen if not retired]
    assert {frozenset({"v1"}), frozenset({"v2"})} <= set(complete)
    assert tree(path) == versions["v1"].files


def test_a_reader_holding_the_old_dir_never_sees_new_files(
    hub: Any, handle: str, cache_dir: str, versions: dict[str, Version]
) -> None:
    path = stage(handle, cache_dir)["path"]
    assert path is not None
    held = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_snapshot(held, path).versions(versions) == {"v1"}
        hub.add_model(MODEL_PATH, versions["v2"].archive)
        assert stage(handle, cache_dir, refresh="if_changed")["refreshed"] is True

        old = read_snapshot(held, path)
    finally:
        os.close(held)
    # The old revision stays whole during its grace period: a long-lived reader finds every file of v1.
    assert old.files == versions["v1"].files and not old.retired
    assert tree(path) == versions["v1"].files


# -- offline ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["argument", "environment"])
def test_offline_serves_a_hit_without_network(
    hub: Any, handle: str, cache_dir: str, versions: dict[str, Version], via: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = stage(handle, cache_dir)
    hub.add_model(MODEL_PATH, versions["v2"].archive)  # changed upstream: only offline keeps it from looking
    hub.reset_stats()
    if via == "environment":
        monkeypatch.setenv("TFHUB_OFFLINE", "1")

    result = stage(handle, cache_dir, refresh="if_changed", offline=True if via == "argument" else None)

    assert hub.stats()["requests"] == 0
    assert result["path"] is not None
    assert result["path"] == first["path"] and result["downloaded"] is False
    assert tree(result["path"]) == versions["v1"].files


@pytest.mark.parametrize("via", ["argument", "environment"])
def test_offline_miss_fails_clearly_without_network(
    hub: Any, handle: str, tmp_path: Path, via: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_dir = tmp_path / "empty-cache"
    if via == "environment":
        monkeypatch.setenv("TFHUB_OFFLINE", "true")

    with pytest.raises(OfflineError) as info:
        stage(handle, str(cache_dir), offline=True if via == "argument" else None)

    message = str(info.value)
    assert handle in message and str(cache_dir) in message and "TFHUB_OFFLINE" in message
    assert hub.stats()["requests"] == 0
    assert not cache_dir.exists()  # no lock, no tmp dir, not even the cache dir


def test_offline_false_overrides_the_environment(
    hub: Any, handle: str, cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TFHUB_OFFLINE", "1")
    result = stage(handle, cache_dir, offline=False)
    assert result["downloaded"] is True and counters(hub)["archive_full"] == 1
