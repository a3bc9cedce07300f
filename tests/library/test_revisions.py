"""What a path promises: a refresh never changes the bytes under a ``path`` handed downstream.

Every staging publishes an immutable revision (``<key>.revisions/<rev>/``) and only then switches
the entry to it: the metadata first (our readers), then the tensorflow_hub view ``<key>``. These
tests hold a path across refreshes and check its bytes, load from it with TensorFlow while the
refresh happens, race ``hub.load(handle)`` loops against back-to-back refreshes, and run the same
promise on a gs:// cache on the emulator. The two versions compute ``x * 2 + 1`` (v1) and
``x * 2 + 5`` (v2), so a load's output names the version it read.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import gcs_helpers
import pytest
from stage_helpers import Version, run_py

from tfhub_cache.cache.inventory import list_entries, prune, verify
from tfhub_cache.cache.layout import EntryNames, encode_meta
from tfhub_cache.cache.staging import lookup_entry, stage
from tfhub_cache.handles import cache_key
from tfhub_cache.storage.gcs import GCSStorage
from tfhub_cache.storage.local import LocalStorage

PY = sys.executable
MODEL_PATH = "/google/revisioned/1"
V1_Y, V2_Y = 1.0, 5.0  # zeros * 2 + offset


@pytest.fixture
def handle(hub: Any, versions: dict[str, Version]) -> str:
    url: str = hub.add_model(MODEL_PATH, versions["v1"].archive)
    return url


def tree(path: str | Path) -> dict[str, bytes]:
    root = Path(path)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def hub_load_y(handle: str, cache: str | Path) -> float:
    """``hub.load(handle)`` in a fresh process (no network needed for a staged model): its output on zeros."""
    out = run_py(
        f"""
        import tensorflow as tf, tensorflow_hub as hub
        m = hub.load({handle!r})
        print(float(m.signatures["serving_default"](x=tf.zeros([1, 3]))["y"].numpy()[0][0]))
        """,
        env={"TFHUB_CACHE_DIR": str(cache)},
    )
    return float(out.strip().splitlines()[-1])


# -- local caches -------------------------------------------------------------------------------------


def test_a_refresh_never_changes_the_files_under_a_path_handed_out(
    hub: Any, handle: str, versions: dict[str, Version], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = stage(handle, str(cache))
    p1, key = first["path"], cache_key(handle)
    assert p1 is not None and first["revision"] and p1 == str(cache / f"{key}.revisions" / first["revision"])
    assert tree(p1) == versions["v1"].files
    assert os.path.realpath(cache / key) == p1  # where tensorflow_hub looks: the current revision

    # A reader that was given p1: it opens saved_model.pb, then loads the whole model after the refresh.
    ready, go = tmp_path / "ready", tmp_path / "go"
    reader = subprocess.Popen(
        [
            PY,
            "-c",
            textwrap.dedent(
                f"""
                import json, os, time
                held = open(os.path.join({p1!r}, "saved_model.pb"), "rb")
                first_bytes = held.read()
                open({str(ready)!r}, "w").close()
                while not os.path.exists({str(go)!r}):
                    time.sleep(0.05)
                import tensorflow as tf
                m = tf.saved_model.load({p1!r})
                y = float(m.signatures["serving_default"](x=tf.zeros([1, 3]))["y"].numpy()[0][0])
                same = first_bytes == open(os.path.join({p1!r}, "saved_model.pb"), "rb").read()
                print(json.dumps({{"y": y, "same_pb": same}}))
                """
            ),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert reader.poll() is None, reader.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "reader did not start"
            time.sleep(0.05)

        hub.add_model(MODEL_PATH, versions["v2"].archive)  # upstream changes
        second = stage(handle, str(cache), refresh="if_changed")
        go.touch()
        out, err = reader.communicate(timeout=300)
    finally:
        if reader.poll() is None:
            reader.kill()
    assert reader.returncode == 0, err[-3000:]

    p2 = second["path"]
    assert p2 is not None
    assert second["refreshed"] is True and second["revision"] != first["revision"] and p2 != p1
    assert json.loads(out.strip().splitlines()[-1]) == {"y": V1_Y, "same_pb": True}  # the reader got v1, whole
    assert tree(p1) == versions["v1"].files  # byte-identical after the refresh
    assert tree(p2) == versions["v2"].files
    assert hub_load_y(handle, cache) == V2_Y  # tensorflow_hub sees the new revision

    kept = prune(LocalStorage(str(cache)))  # defaults: a superseded revision has a day of grace
    assert kept["removed_revisions"] == [] and Path(p1).is_dir()

    pruned = subprocess.run(
        [str(Path(PY).with_name("tfhub-cache")), "prune", "--cache-dir", str(cache), "--superseded-max-age", "0s"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pruned.returncode == 0, pruned.stderr
    assert first["revision"] in pruned.stdout
    assert not Path(p1).exists() and tree(p2) == versions["v2"].files
    assert hub_load_y(handle, cache) == V2_Y
    assert lookup_entry(LocalStorage(str(cache)), handle) == {**second, "downloaded": False, "refreshed": False}


def test_unchanged_upstream_keeps_path_and_revision(hub: Any, handle: str, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    first = stage(handle, cache)
    hub.reset_stats()
    again = stage(handle, cache, refresh="if_changed")
    assert hub.stats()["models"][MODEL_PATH].get("archive_full", 0) == 0  # a 304, no archive bytes
    assert (again["path"], again["revision"], again["refreshed"]) == (first["path"], first["revision"], False)


def test_the_same_archive_staged_again_is_the_same_revision_without_a_second_copy(
    hub: Any, handle: str, versions: dict[str, Version], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = stage(handle, str(cache))
    again = stage(handle, str(cache), refresh="always")  # downloads, finds the same sha256
    assert again["downloaded"] is True and again["refreshed"] is False
    assert (again["path"], again["revision"]) == (first["path"], first["revision"])
    revisions_dir = cache / f"{cache_key(handle)}.revisions"
    assert first["revision"] is not None
    assert sorted(p.name for p in revisions_dir.iterdir()) == sorted([first["revision"], f"{first['revision']}.json"])

    # v2, then v1 again: v1's revision (still in its grace period) becomes current again.
    hub.add_model(MODEL_PATH, versions["v2"].archive)
    second = stage(handle, str(cache), refresh="if_changed")
    hub.add_model(MODEL_PATH, versions["v1"].archive)
    back = stage(handle, str(cache), refresh="if_changed")
    assert second["revision"] != first["revision"]
    assert back["revision"] == first["revision"] and back["path"] == first["path"] and back["refreshed"] is True
    entry = list_entries(LocalStorage(str(cache)))[0]
    assert entry["revision"] == first["revision"]
    assert {r["revision"]: r["current"] for r in entry["revisions"]} == {
        first["revision"]: True,
        second["revision"]: False,
    }


def test_ls_and_verify_show_every_revision(hub: Any, handle: str, versions: dict[str, Version], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = stage(handle, str(cache))
    hub.add_model(MODEL_PATH, versions["v2"].archive)
    second = stage(handle, str(cache), refresh="if_changed")
    storage = LocalStorage(str(cache))

    [entry] = list_entries(storage)
    assert entry["path"] == second["path"] and entry["revision"] == second["revision"]
    by_rev = {r["revision"]: r for r in entry["revisions"]}
    assert set(by_rev) == {first["revision"], second["revision"]}
    assert by_rev[second["revision"]]["current"] and not by_rev[first["revision"]]["current"]
    assert by_rev[first["revision"]]["superseded_at"] and by_rev[first["revision"]]["superseded_for_s"] >= 0
    assert by_rev[first["revision"]]["size"] == sum(len(b) for b in versions["v1"].files.values())
    assert entry["size"] >= by_rev[first["revision"]]["size"] + by_rev[second["revision"]]["size"]

    assert first["path"] is not None
    (Path(first["path"]) / "saved_model.pb").write_bytes(b"damaged")  # someone wrote into an old revision
    assert verify(storage)["ok"] is True  # the current revision is intact
    report = verify(storage, all_revisions=True)
    assert report["ok"] is False
    assert [(r["revision"], r["status"]) for r in report["entries"]] == [
        (second["revision"], "ok"),
        (first["revision"], "damaged"),
    ]
    cli = Path(PY).with_name("tfhub-cache")
    out = subprocess.run(
        [str(cli), "verify", "--cache-dir", str(cache), "--all-revisions"], capture_output=True, text=True
    )
    assert out.returncode == 1 and "superseded" in out.stdout
    # the advice fits a superseded revision (staging again would leave it damaged), and it works
    assert "--refresh always" not in out.stdout
    advice = out.stdout.splitlines()[-1]
    assert advice.startswith("1 superseded revisions damaged: remove them with tfhub-cache prune --superseded-max-age")
    restaged = stage(handle, str(cache), refresh="always")
    assert verify(storage, all_revisions=True)["ok"] is False  # what the old advice said does not repair it
    subprocess.run([str(cli), "prune", "--cache-dir", str(cache), "--superseded-max-age", "0s"], check=True)
    assert verify(storage, all_revisions=True)["ok"] is True
    assert Path(restaged["path"], "saved_model.pb").is_file()

    # a damaged current revision: staging again is what repairs it
    (Path(restaged["path"]) / "saved_model.pb").write_bytes(b"damaged")
    out = subprocess.run([str(cli), "verify", "--cache-dir", str(cache)], capture_output=True, text=True)
    assert out.stdout.splitlines()[-1] == f"1 damaged: stage again with --refresh always: {handle}"


def test_prune_never_touches_the_current_revision_nor_locked_or_kept_entries(
    hub: Any, handle: str, versions: dict[str, Version], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = stage(handle, str(cache))
    hub.add_model(MODEL_PATH, versions["v2"].archive)
    second = stage(handle, str(cache), refresh="if_changed")
    assert first["path"] is not None and second["path"] is not None
    storage = LocalStorage(str(cache))

    kept = prune(storage, superseded_max_age="0s", keep=[handle])
    assert kept["removed_revisions"] == [] and Path(first["path"]).is_dir()

    lock = cache / f"{cache_key(handle)}.lock"
    lock.write_text(f"{os.uname().nodename}.{os.getpid()}.{'a' * 32}")  # a live holder: this process
    try:
        locked = prune(storage, superseded_max_age="0s")
        assert locked["removed_revisions"] == [] and Path(first["path"]).is_dir()
    finally:
        lock.unlink()

    dry = prune(storage, superseded_max_age="0s", dry_run=True)
    assert [r["revision"] for r in dry["removed_revisions"]] == [first["revision"]] and Path(first["path"]).is_dir()
    done = prune(storage, superseded_max_age="0s")
    assert [r["revision"] for r in done["removed_revisions"]] == [first["revision"]]
    assert not Path(first["path"]).exists() and tree(second["path"]) == versions["v2"].files
    assert prune(storage, superseded_max_age="0s")["removed_revisions"] == []  # the current one stays


def test_an_entry_of_the_previous_release_is_converted_without_copying(
    hub: Any, handle: str, versions: dict[str, Version], tmp_path: Path
) -> None:
    """The first release kept the model at ``<key>/`` with metadata lacking ``revision``."""
    cache = tmp_path / "cache"
    names = EntryNames(cache_key(handle))
    model = cache / names.model
    model.mkdir(parents=True)
    for rel, data in versions["v1"].files.items():
        (model / rel).parent.mkdir(parents=True, exist_ok=True)
        (model / rel).write_bytes(data)
    manifest = {rel: {"size": len(data)} for rel, data in versions["v1"].files.items()}
    legacy = {"handle": handle, "sha256": hashlib.sha256(versions["v1"].archive.read_bytes()).hexdigest()}
    (cache / names.meta).write_bytes(encode_meta({**legacy, "marker": "saved_model.pb", "manifest": manifest}))
    inode = (model / "saved_model.pb").stat().st_ino

    hit = stage(handle, str(cache))  # a hit: converted in place, nothing downloaded
    assert hit["downloaded"] is False and hit["revision"]
    assert hit["path"] == str(cache / names.revision(hit["revision"]))
    assert (Path(hit["path"]) / "saved_model.pb").stat().st_ino == inode  # hard links: no bytes copied
    assert (cache / names.model).is_symlink() and os.path.realpath(cache / names.model) == hit["path"]
    assert hub.stats()["models"].get(MODEL_PATH, {}).get("archive_full", 0) == 0

    hub.add_model(MODEL_PATH, versions["v2"].archive)
    refreshed = stage(handle, str(cache), refresh="if_changed")
    assert refreshed["path"] != hit["path"] and tree(hit["path"]) == versions["v1"].files


def test_a_directory_tensorflow_hub_filled_is_adopted_as_a_revision_without_copying(
    hub: Any, handle: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    resolved = run_py(
        f"import tensorflow_hub as hub; print(hub.resolve({handle!r}))", env={"TFHUB_CACHE_DIR": str(cache)}
    ).strip()
    inode = (Path(resolved) / "saved_model.pb").stat().st_ino
    hub.reset_stats()

    hit = stage(handle, str(cache))
    assert hit["path"] is not None
    assert hub.stats()["requests"] == 0 and hit["downloaded"] is False and hit["revision"]
    assert (Path(hit["path"]) / "saved_model.pb").stat().st_ino == inode
    assert os.path.realpath(resolved) == hit["path"]
    assert hub_load_y(handle, cache) == V1_Y


LOADER = """
import json, os, sys, time
import tensorflow as tf, tensorflow_hub as hub
handle, stop, out = sys.argv[1], sys.argv[2], sys.argv[3]
results = []
while not os.path.exists(stop):
    try:
        m = hub.load(handle)
        y = m.signatures["serving_default"](x=tf.zeros([1, 3]))["y"].numpy().tolist()
        results.append({"y": y, "t": time.time()})
    except Exception as exc:  # every error counts against the promise
        results.append({"error": f"{type(exc).__name__}: {exc}", "t": time.time()})
    with open(out + ".tmp", "w") as f:
        json.dump(results, f)
    os.replace(out + ".tmp", out)
"""


def test_hub_load_loops_see_one_version_per_load_during_back_to_back_refreshes(
    hub: Any, handle: str, versions: dict[str, Version], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    stage(handle, str(cache))
    stop = tmp_path / "stop"
    outs = [tmp_path / f"loader{i}.json" for i in range(4)]
    env = {**os.environ, "TFHUB_CACHE_DIR": str(cache), "TFHUB_OFFLINE": "1"}
    loaders = [
        subprocess.Popen([PY, "-c", LOADER, handle, str(stop), str(out)], env=env, stderr=subprocess.PIPE, text=True)
        for out in outs
    ]

    def loads(out: Path) -> list[dict[str, Any]]:
        try:
            data: list[dict[str, Any]] = json.loads(out.read_text())
            return data
        except (FileNotFoundError, ValueError):
            return []

    def wait_for_loads(since: float) -> None:
        deadline = time.monotonic() + 240
        while not all(any(r["t"] > since for r in loads(out)) for out in outs):
            assert all(p.poll() is None for p in loaders), "a loader died"
            assert time.monotonic() < deadline, "loaders made no progress"
            time.sleep(0.2)

    try:
        wait_for_loads(0.0)
        tags = ["v2", "v1", "v2", "v1", "v2", "v1"]
        revisions = set()
        for tag in tags:  # 6 back-to-back refreshes, each a real change upstream
            hub.add_model(MODEL_PATH, versions[tag].archive)
            result = stage(handle, str(cache), refresh="if_changed")
            assert result["refreshed"] is True
            revisions.add(result["revision"])
            time.sleep(0.3)
        wait_for_loads(time.time())
    finally:
        stop.touch()
        for p in loaders:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
    assert len(revisions) == 2  # v1 and v2, each published once and switched back and forth
    every = [r for out in outs for r in loads(out)]
    # TensorFlow opens a model's files one by one through the <sha1> link: a load that spans a switch can
    # read one revision's variables index and the other's data, and TensorFlow's checksums refuse that
    # (DataLossError, retry it). That is the only failure allowed, at most once per switch per loader.
    errors = [r["error"] for r in every if "error" in r]
    assert [e for e in errors if not e.startswith("DataLossError")] == []
    for out in outs:
        assert sum("error" in r for r in loads(out)) <= len(tags), loads(out)
    values = {r["y"][0][0] for r in every}
    assert values == {V1_Y, V2_Y}, values  # loads before and after; never anything else
    assert all(r["y"] == [[r["y"][0][0]] * 3] for r in every)


def test_two_refreshes_at_once_publish_one_new_revision(
    hub: Any, handle: str, versions: dict[str, Version], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = stage(handle, str(cache))
    hub.add_model(MODEL_PATH, versions["v2"].archive)
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(stage(handle, str(cache), refresh="if_changed")))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r["revision"] for r in results}) == 1 and results[0]["revision"] != first["revision"]
    entry = list_entries(LocalStorage(str(cache)))[0]
    assert len(entry["revisions"]) == 2


# -- gs:// caches --------------------------------------------------------------------------------------


def gcs_tree(storage: GCSStorage, name: str) -> dict[str, tuple[int, str]]:
    prefix = storage.dir_key(name)
    return {b.name[len(prefix) :]: (int(b.size), b.crc32c) for b in storage.list_objects(prefix)}


def test_gcs_refreshes_keep_old_revisions_intact_and_readers_never_see_not_staged(
    hub: Any, handle: str, versions: dict[str, Version], gcs_cache: str
) -> None:
    storage = GCSStorage(gcs_cache, touch_interval=0)
    first = stage(handle, gcs_cache)
    assert first["revision"] is not None
    names = EntryNames(cache_key(handle))
    assert first["path"] == storage.location(names.revision(first["revision"]))
    p1_objects = gcs_tree(storage, names.revision(first["revision"]))
    assert {rel: size for rel, (size, _crc) in p1_objects.items()} == {
        rel: len(b) for rel, b in versions["v1"].files.items()
    }
    assert gcs_tree(storage, names.model) == p1_objects  # the tensorflow_hub view is a copy of it

    misses: list[float] = []
    seen: set[str] = set()
    stop = threading.Event()

    def reader() -> None:
        mine = GCSStorage(gcs_cache, touch_interval=0)
        while not stop.is_set():
            entry = lookup_entry(mine, handle)
            if entry is None:
                misses.append(time.time())
            else:
                seen.add(str(entry["revision"]))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        results = []
        for tag in ["v2", "v1", "v2", "v1", "v2", "v1"]:
            hub.add_model(MODEL_PATH, versions[tag].archive)
            results.append(stage(handle, gcs_cache, refresh="if_changed"))
    finally:
        stop.set()
        thread.join()
    assert misses == []  # never "not staged" during 6 back-to-back refreshes
    assert all(r["refreshed"] for r in results)
    second = results[0]
    assert second["revision"] is not None
    assert second["path"] != first["path"] and seen >= {first["revision"], second["revision"]}
    assert gcs_tree(storage, names.revision(first["revision"])) == p1_objects  # p1's objects unchanged
    assert gcs_tree(storage, names.model) == p1_objects  # the view ends on v1 again

    hub.add_model(MODEL_PATH, versions["v2"].archive)
    last = stage(handle, gcs_cache, refresh="if_changed")
    assert last["revision"] == second["revision"]
    assert gcs_tree(storage, names.model) == gcs_tree(storage, names.revision(second["revision"]))
    report = prune(storage, superseded_max_age="0s")
    assert [r["revision"] for r in report["removed_revisions"]] == [first["revision"]]
    assert gcs_tree(storage, names.revision(first["revision"])) == {}
    assert lookup_entry(storage, handle) is not None
    assert gcs_helpers.leftovers(storage) == []


def test_prune_operator_takes_superseded_max_age(
    hub: Any, handle: str, versions: dict[str, Version], tmp_path: Path
) -> None:
    from airflow_provider_tfhub.operators.prune import TFHubPruneCacheOperator

    cache = str(tmp_path / "cache")
    first = stage(handle, cache)
    hub.add_model(MODEL_PATH, versions["v2"].archive)
    second = stage(handle, cache, refresh="if_changed")
    assert first["path"] is not None and second["path"] is not None

    default = TFHubPruneCacheOperator(task_id="prune", cache_dir=cache).execute({})
    assert default["removed_revisions"] == [] and Path(first["path"]).is_dir()
    report = TFHubPruneCacheOperator(task_id="prune", cache_dir=cache, superseded_max_age="0s").execute({})
    assert [r["path"] for r in report["removed_revisions"]] == [first["path"]]
    assert not Path(first["path"]).exists() and Path(second["path"]).is_dir()
