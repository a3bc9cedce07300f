"""Issue 3 acceptance: shared gs:// caches, on a real GCS emulator (fake-gcs-server on 127.0.0.1).

Stagers run as real processes (``python -c`` calling ``core.staging.stage``) against the loopback
hub, so locks, leases, SIGKILL and rlimits are the operating system's, not simulations. Storage
methods are exercised one by one against the emulator, and tensorflow_hub itself reads the cache
through the TLS relay of ``tls_relay.py``.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google_crc32c
import pytest
from gcs_helpers import (
    BUCKET,
    CutProxy,
    all_objects,
    assert_complete,
    leftovers,
    make_synthetic_archive,
    result_of,
    run_stage_subprocess,
    wait_ready,
)

from tfhub_cache.cache.layout import EntryNames, decode_meta, parse_lock_content, tree_of
from tfhub_cache.cache.staging import is_cached, lookup_entry, stage
from tfhub_cache.errors import CacheError, ConfigurationError, DownloadError
from tfhub_cache.fetch.gcs_source import GCSArchiveSource
from tfhub_cache.handles import cache_key
from tfhub_cache.storage import open_storage
from tfhub_cache.storage.gcs import GCSStorage, GCSTreeSink

MiB = 1024 * 1024

# The emulator and per-test gs:// caches (shared with test_gcs_dag.py).


@pytest.fixture
def storage(gcs_cache: str) -> GCSStorage:
    return GCSStorage(gcs_cache, touch_interval=0)


@pytest.fixture(scope="session")
def big_archive(model_archives: dict[str, Path]) -> Path:
    """160 MiB of incompressible "variables" plus 200 small files: bigger than any buffer we hold.

    Built once next to the test SavedModels (``.cache/test-models``), in about 5 s.
    """
    root = model_archives["demo_v1"].parents[1]
    return make_synthetic_archive(root / "gcs_big" / "model.tar.gz", big_bytes=160 * MiB, small_files=200)


def archive_downloads(hub: Any, path: str) -> int:
    return int(hub.stats()["models"].get(path, {}).get("archive_full", 0))


def chunks_of(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def crc_b64(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def read_all(storage: Any, name: str) -> bytes:
    with storage.open_read(name) as f:
        return bytes(f.read())


# -- Storage primitives against the emulator ---------------------------------------------------------------


def test_locations_and_bad_settings(gcs_env: dict[str, str]) -> None:
    s = GCSStorage("gs://bkt/a/b/")
    assert s.location() == "gs://bkt/a/b" and s.location("k.lock") == "gs://bkt/a/b/k.lock"
    assert s.key("k/saved_model.pb") == "a/b/k/saved_model.pb"
    assert GCSStorage("gs://bkt").location("x") == "gs://bkt/x"
    assert isinstance(open_storage("gs://bkt/c"), GCSStorage)
    with pytest.raises(ConfigurationError, match="names no bucket"):
        GCSStorage("gs:///prefix")
    with pytest.raises(ConfigurationError, match="small_file_max=0 must be between 1 and 8388608"):
        GCSStorage("gs://bkt/c", small_file_max=0)
    with pytest.raises(ConfigurationError, match="must hold the resume window"):
        GCSStorage("gs://bkt/c", resume_window=32 * MiB, max_inflight_bytes=16 * MiB)
    with pytest.raises(ConfigurationError, match="max_workers"):
        GCSStorage("gs://bkt/c", max_workers=0)
    with pytest.raises(ConfigurationError, match=r"composite_part_bytes=25165824 must be 0 \(off\) or at most half"):
        GCSStorage("gs://bkt/c", composite_part_bytes=24 * MiB, max_inflight_bytes=40 * MiB)
    # Parallel composite uploads are on by default, and off when the budget cannot hold two parts.
    assert GCSStorage("gs://bkt/c").composite_part_bytes == 16 * MiB
    assert GCSStorage("gs://bkt/c", max_inflight_bytes=24 * MiB).composite_part_bytes == 0


def test_importing_the_backend_loads_neither_tensorflow_nor_the_client_eagerly() -> None:
    code = (
        "import sys\n"
        "import tfhub_cache.storage.gcs, tfhub_cache.cache.staging\n"
        "from tfhub_cache.storage import open_storage\n"
        "open_storage('gs://bkt/cache')\n"
        "print(sorted(m for m in ('tensorflow', 'airflow', 'google.cloud.storage') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_small_objects_stat_touch_and_streaming_reads(storage: GCSStorage) -> None:
    assert storage.read_bytes("k.meta.json") is None and storage.stat("k.meta.json") is None
    assert not storage.has_file("k.meta.json")
    storage.ensure_root()
    storage.write_bytes("k.meta.json", b'{"a": 1}')
    assert storage.read_bytes("k.meta.json") == b'{"a": 1}' and storage.has_file("k.meta.json")
    first = storage.stat("k.meta.json")
    assert first is not None and first.size == 8 and abs(first.mtime - time.time()) < 300
    storage.write_bytes("k.meta.json", b'{"a": 2}')
    second = storage.stat("k.meta.json")
    assert second is not None and second.token != first.token  # every rewrite is a new generation

    time.sleep(0.01)
    storage.touch("k.meta.json")
    touched = storage.stat("k.meta.json")
    # (Real GCS keeps the generation on a metadata patch; fake-gcs-server 1.54 gives it a new one.)
    assert touched is not None and touched.mtime > second.mtime and touched.size == second.size
    storage.touch("missing.meta.json")  # best effort: nothing to record, no error
    lazy = GCSStorage(storage.root, touch_interval=3600)
    lazy.touch("k.meta.json")  # used moments ago: no metadata write (GCS allows ~1 mutation/s per object)
    assert storage.stat("k.meta.json") == touched

    payload = os.urandom(3 * MiB + 17)
    storage.write_bytes("k/blob.bin", payload)
    assert read_all(storage, "k/blob.bin") == payload
    with pytest.raises(FileNotFoundError):
        storage.open_read("k/missing.bin")


def test_create_exclusive_race_has_exactly_one_winner(gcs_cache: str) -> None:
    workers = [GCSStorage(gcs_cache) for _ in range(16)]  # 16 independent clients, like 16 machines
    barrier = threading.Barrier(len(workers))
    results: list[str | None] = [None] * len(workers)
    errors: list[BaseException] = []

    def attempt(i: int) -> None:
        try:
            barrier.wait()
            results[i] = workers[i].create_exclusive("k.lock", f"host.{i}.uid{i}".encode())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    winners = [i for i, token in enumerate(results) if token is not None]
    assert len(winners) == 1
    stat = workers[0].stat("k.lock")
    assert stat is not None and stat.token == results[winners[0]]
    assert workers[0].read_bytes("k.lock") == f"host.{winners[0]}.uid{winners[0]}".encode()


def test_lease_refresh_is_compare_and_swap(storage: GCSStorage) -> None:
    content = b"host.1.abc"
    token = storage.create_exclusive("k.lock", content)
    assert token is not None
    assert storage.create_exclusive("k.lock", b"host.2.def") is None
    renewed = storage.refresh_lease("k.lock", token, content)
    assert renewed is not None and renewed != token
    stat = storage.stat("k.lock")
    assert stat is not None and stat.token == renewed
    # A stale generation whose object still holds our unique content (a renewal whose answer was lost
    # and was retried): the lease is still ours, at its current generation.
    assert storage.refresh_lease("k.lock", token, content) == renewed
    # Taken over (deleted with our generation as precondition, re-created by another stager): lost.
    assert storage.delete("k.lock", token=renewed)
    theirs = storage.create_exclusive("k.lock", b"host.2.def")
    assert theirs is not None
    assert storage.refresh_lease("k.lock", renewed, content) is None
    assert storage.read_bytes("k.lock") == b"host.2.def"
    assert storage.delete("k.lock", token=theirs)
    assert storage.refresh_lease("k.lock", theirs, b"host.2.def") is None  # deleted: nothing to renew


def test_delete_with_a_stale_token_keeps_the_object(storage: GCSStorage) -> None:
    old = storage.create_exclusive("k.lock", b"host.1.old")
    assert old is not None and storage.delete("k.lock", token=old)
    new = storage.create_exclusive("k.lock", b"host.2.new")
    assert new is not None and new != old
    assert storage.delete("k.lock", token=old) is False  # a takeover decided on the old holder must not win
    assert storage.read_bytes("k.lock") == b"host.2.new"
    assert storage.delete("k.lock") is True and storage.delete("k.lock") is False


def test_trees_listing_and_deletion(storage: GCSStorage) -> None:
    key = "a" * 40
    files = {f"{key}/saved_model.pb": 10, f"{key}/variables/v.data": 300, f"{key}/variables/v.index": 20}
    for name, size in files.items():
        storage.write_bytes(name, os.urandom(size))
    for name in (f"{key}.meta.json", f"{key}.descriptor.txt", f"{key}.lock", f"{key}.0123abcd.tmp/saved_model.pb"):
        storage.write_bytes(name, b"x")
    storage.write_bytes("b" * 40 + ".meta.json", b"x")

    assert storage.tree_is_nonempty(key) and not storage.tree_is_nonempty("c" * 40)
    assert sorted(storage.list_tree(key)) == [
        ("saved_model.pb", 10),
        ("variables/v.data", 300),
        ("variables/v.index", 20),
    ]
    assert storage.list_root(prefix=f"{key}.") == [
        f"{key}.0123abcd.tmp",
        f"{key}.descriptor.txt",
        f"{key}.lock",
        f"{key}.meta.json",
    ]
    assert set(storage.list_root()) == {key, *storage.list_root(prefix=f"{key}."), "b" * 40 + ".meta.json"}

    assert storage.delete_tree(key) == 330
    assert not storage.tree_is_nonempty(key) and list(storage.list_tree(key)) == []
    assert storage.delete_tree(key) == 0
    assert storage.delete_tree(f"{key}.descriptor.txt") == 1  # a single object is a tree of one
    assert storage.delete_tree(f"{key}.0123abcd.tmp") == 1
    assert storage.list_root(prefix=f"{key}.") == [f"{key}.lock", f"{key}.meta.json"]


# -- clear errors, no retries -----------------------------------------------------------------------------


def count_requests(storage: GCSStorage, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every HTTP request the storage's client sends (the requests still go out for real)."""
    session = storage.client._http
    calls: list[str] = []
    real = session.request

    def counting(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(f"{method} {url}")
        return real(method, url, *args, **kwargs)

    monkeypatch.setattr(session, "request", counting)
    return calls


def test_a_view_keeps_its_marker_when_a_new_revision_changes_only_other_files(storage: GCSStorage) -> None:
    for rev, variables in (("r1", b"v1"), ("r2", b"v22")):
        storage.write_bytes(f"{rev}/saved_model.pb", b"graph")  # the same marker in both revisions
        storage.write_bytes(f"{rev}/variables/variables.index", variables)
    storage.publish_view("view", "r1", "view.tmp")
    storage.publish_view("view", "r2", "view.tmp")
    assert dict(storage.list_tree("view")) == {"saved_model.pb": 5, "variables/variables.index": 3}
    storage.publish_view("view", "r2", "view.tmp")  # nothing changed: nothing is taken away either
    assert dict(storage.list_tree("view")) == {"saved_model.pb": 5, "variables/variables.index": 3}
    assert read_all(storage, "view/variables/variables.index") == b"v22"


def test_missing_bucket_is_a_clear_error_without_retries(
    gcs_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = GCSStorage("gs://no-such-tfhub-bucket/cache")
    calls = count_requests(storage, monkeypatch)
    with pytest.raises(CacheError, match=r"'no-such-tfhub-bucket' does not exist.*create it.*fix cache_dir") as info:
        storage.ensure_root()
    assert info.value.permanent is True
    # No request was retried (the client's own one-off bucket-metadata fetch may show up once).
    assert calls and len(calls) == len(set(calls))
    calls.clear()
    with pytest.raises(CacheError, match="does not exist"):
        storage.write_bytes("k.descriptor.txt", b"x")
    assert len(calls) == len(set(calls)) and sum(c.startswith("POST") for c in calls) == 1
    assert storage.read_bytes("k.meta.json") is None and storage.list_root() == []  # like a missing local dir
    with pytest.raises(CacheError, match="'no-such-tfhub-bucket' does not exist"):
        stage("/nonexistent/never-read.tar.gz", "gs://no-such-tfhub-bucket/cache")


class _DenyingGCS(http.server.ThreadingHTTPServer):
    """A loopback server answering every GCS request 403, as GCS does for a principal without IAM roles.

    The emulator has no IAM, so this is how a real client meets a real 403 here.
    """

    def __init__(self) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _deny(self) -> None:
                outer.requests.append(f"{self.command} {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                body = json.dumps(
                    {"error": {"code": 403, "message": "Access denied.", "errors": [{"reason": "forbidden"}]}}
                ).encode()
                self.send_response(403)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _deny

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        return storage.Client(
            project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
        )

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def denying_gcs() -> Iterator[_DenyingGCS]:
    server = _DenyingGCS()
    try:
        yield server
    finally:
        server.close()


def test_permission_denied_names_the_principal_and_is_not_retried(denying_gcs: _DenyingGCS) -> None:
    storage = GCSStorage(
        "gs://locked-bucket/cache", client=denying_gcs.client(), small_file_max=256 * 1024, resume_window=MiB
    )

    def object_requests() -> list[str]:  # without the client's one-off background bucket-metadata fetch
        return [r for r in denying_gcs.requests if not r.startswith("GET /storage/v1/b/locked-bucket?")]

    with pytest.raises(CacheError, match=r"Permission denied .*gs://locked-bucket/cache for anonymous") as info:
        storage.ensure_root()
    assert info.value.permanent is True and len(object_requests()) == 1
    with pytest.raises(CacheError, match="Permission denied"):
        storage.create_exclusive("k.lock", b"h.1.u")
    assert len(object_requests()) == 2  # not retried

    # Upload workers fail; the producer is stopped, nothing hangs, and the error is the same clear one.
    sink = storage.open_sink("k", "k.u.tmp")
    with pytest.raises(CacheError, match="Permission denied"):
        sink.add_file("variables/v.data", 4 * MiB, chunks_of(os.urandom(4 * MiB)))
        sink.add_file("saved_model.pb", 10, [b"0123456789"])
        sink.finish()
    sink.abort()

    with pytest.raises(DownloadError, match=r"Permission denied reading 'gs://locked-bucket/m\.tar\.gz'") as dl:
        GCSArchiveSource("gs://locked-bucket/m.tar.gz", client=denying_gcs.client()).open()
    assert dl.value.permanent is True


# -- the tree sink: order of publication, bounded memory, abort -------------------------------------------


def test_sink_streams_files_and_publishes_markers_last(storage: GCSStorage) -> None:
    s = GCSStorage(
        storage.root, small_file_max=256 * 1024, resume_window=256 * 1024, max_inflight_bytes=MiB, max_workers=4
    )
    key, tmp = "d" * 40, "d" * 40 + ".0a1b.tmp"
    big = os.urandom(3 * MiB + 5)  # streamed, one request of a resumable upload session
    exact = os.urandom(512 * 1024)  # streamed too, from chunks that fill the resume window exactly
    small = {f"assets.extra/f{i}.txt": os.urandom(i * 1000 + 1) for i in range(20)}
    sink = s.open_sink(key, tmp)
    assert isinstance(sink, GCSTreeSink)
    sink.add_dir("variables")
    sink.add_dir("assets")  # stays empty: nothing to write on GCS
    sink.add_file("saved_model.pb", 7, [b"marker!"])
    sink.add_file("variables/variables.data-00000-of-00001", len(big), chunks_of(big))
    sink.add_file("variables/exact.bin", len(exact), chunks_of(exact))
    for rel, data in small.items():
        sink.add_file(rel, len(data), [data])
    manifest = sink.finish()

    expected = {
        "saved_model.pb": b"marker!",
        "variables/variables.data-00000-of-00001": big,
        "variables/exact.bin": exact,
    }
    expected.update(small)
    assert {rel: (r.size, r.crc32c) for rel, r in manifest.items()} == {
        rel: (len(d), crc_b64(d)) for rel, d in expected.items()
    }
    assert 0 < sink.peak_inflight <= MiB  # never more model bytes in memory than allowed
    # Before commit: every file but the marker is in place; tensorflow_hub would get a load error.
    assert not s.has_file(f"{key}/saved_model.pb") and s.has_file(f"{tmp}/saved_model.pb")
    assert len(list(s.list_tree(key))) == len(expected) - 1

    assert sink.commit() is True
    assert dict(s.list_tree(key)) == {rel: len(d) for rel, d in expected.items()}
    assert all(read_all(s, f"{key}/{rel}") == d for rel, d in expected.items())
    assert s.bucket.get_blob(s.key(f"{key}/variables/variables.data-00000-of-00001")).crc32c == crc_b64(big)
    assert list(s.list_tree(tmp)) == []
    sink.abort()  # after commit: a no-op
    assert len(list(s.list_tree(key))) == len(expected)


def test_commit_loses_to_an_existing_model_and_abort_removes_only_ours(storage: GCSStorage) -> None:
    key = "e" * 40
    storage.write_bytes(f"{key}/saved_model.pb", b"theirs")
    storage.write_bytes(f"{key}/variables/v.index", b"theirs")
    sink = storage.open_sink(key, f"{key}.1111.tmp")
    sink.add_file("saved_model.pb", 4, [b"ours"])
    sink.add_file("variables/v.index", 4, [b"ours"])
    sink.finish()
    assert sink.commit() is False
    sink.abort()
    assert storage.read_bytes(f"{key}/saved_model.pb") == b"theirs"  # their marker untouched
    assert storage.has_file(f"{key}/variables/v.index")  # shared names are not deleted from under them
    assert list(storage.list_tree(f"{key}.1111.tmp")) == []

    # A marker removed under us before commit (a stager that wrongly broke our lock cleaned our tmp):
    # a clear, retryable error instead of "bucket missing".
    other = "9" * 40
    sink = storage.open_sink(other, f"{other}.2222.tmp")
    sink.add_file("saved_model.pb", 4, [b"ours"])
    sink.finish()
    storage.delete_tree(f"{other}.2222.tmp")
    with pytest.raises(CacheError, match="vanished") as info:
        sink.commit()
    assert info.value.permanent is False
    sink.abort()
    assert not storage.tree_is_nonempty(other)


def test_abort_deletes_everything_written_even_mid_file(storage: GCSStorage) -> None:
    s = GCSStorage(storage.root, small_file_max=256 * 1024, resume_window=256 * 1024, max_inflight_bytes=MiB)
    key = "f" * 40
    sink = s.open_sink(key, f"{key}.2222.tmp")
    sink.add_file("saved_model.pb", 4, [b"mark"])
    sink.add_file("variables/a.bin", 100_000, [os.urandom(100_000)])

    def broken() -> Iterator[bytes]:
        yield from chunks_of(os.urandom(MiB))
        raise OSError("archive cut off")  # the extractor fails in the middle of a large member

    with pytest.raises(OSError, match="cut off"):
        sink.add_file("variables/b.bin", 2 * MiB, broken())
    sink.abort()
    sink.abort()  # idempotent
    assert all_objects(s) == {}


def test_streamed_upload_resumes_after_a_dropped_connection(gcs_emulator: Any, gcs_cache: str) -> None:
    proxy = CutProxy(gcs_emulator.port)
    try:
        root = gcs_cache.replace("/cache", "/resume")
        data = os.urandom(6 * MiB)
        proxy.arm(cut_after=3 * MiB)  # the streamed request breaks off halfway
        s = GCSStorage(
            root, client=proxy.client(), small_file_max=256 * 1024, resume_window=8 * MiB, max_inflight_bytes=12 * MiB
        )
        sink = s.open_sink("k", "k.1.tmp")
        sink.add_file("variables/v.data", len(data), chunks_of(data))
        sink.add_file("saved_model.pb", 2, [b"pb"])
        manifest = sink.finish()
        assert sink.commit() is True
        assert proxy.cuts == 1
        assert manifest["variables/v.data"].crc32c == crc_b64(data)
        assert read_all(s, "k/variables/v.data") == data

        # A window smaller than what was sent before the break: a clear, retryable error, nothing left.
        proxy.arm(cut_after=3 * MiB)
        small = GCSStorage(
            root, client=proxy.client(), small_file_max=256 * 1024, resume_window=MiB, max_inflight_bytes=2 * MiB
        )
        sink = small.open_sink("j", "j.1.tmp")
        with pytest.raises(CacheError, match=r"cannot resume.*resume_window") as info:
            sink.add_file("variables/v.data", len(data), chunks_of(data))
            sink.finish()
        assert info.value.permanent is False
        sink.abort()
        assert proxy.cuts == 2 and list(small.list_tree("j")) == []
    finally:
        proxy.close()


def composite_storage(root: str, **kwargs: Any) -> GCSStorage:
    """Parts of 1 MiB, at most 4 MiB of them in memory: a few MiB exercise every composite code path."""
    options: dict[str, Any] = {
        "small_file_max": 256 * 1024,
        "resume_window": MiB,
        "max_inflight_bytes": 4 * MiB,
        "composite_part_bytes": MiB,
        "max_workers": 4,
    }
    return GCSStorage(root, **{**options, **kwargs})


def test_composite_upload_is_byte_identical_in_two_compose_stages_and_leaves_no_parts(
    storage: GCSStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = composite_storage(storage.root)
    calls = count_requests(s, monkeypatch)
    key, tmp = "c" * 40, "c" * 40 + ".3c3c.tmp"
    huge = os.urandom(40 * MiB + 12345)  # 41 parts: two intermediate composes of <= 32, then the final one
    three = os.urandom(2 * MiB + 1)  # just over two parts: three parts, one compose
    two = os.urandom(2 * MiB)  # two parts exactly: streamed in one request instead
    sink = s.open_sink(key, tmp)
    assert isinstance(sink, GCSTreeSink)
    sink.add_file("variables/variables.data-00000-of-00001", len(huge), chunks_of(huge, 300_000))
    sink.add_file("variables/three.bin", len(three), chunks_of(three))
    sink.add_file("variables/two.bin", len(two), chunks_of(two))
    sink.add_file("saved_model.pb", 2, [b"pb"])
    manifest = sink.finish()

    expected = {"variables/variables.data-00000-of-00001": huge, "variables/three.bin": three, "variables/two.bin": two}
    assert {rel: (manifest[rel].size, manifest[rel].crc32c) for rel in expected} == {
        rel: (len(d), crc_b64(d)) for rel, d in expected.items()
    }
    composes = [c for c in calls if c.startswith("POST") and "/compose" in c]
    assert len(composes) == 3 + 1  # huge: 2 intermediates + final; three: one
    assert len([c for c in calls if "uploadType=media" in c]) == 41 + 3
    assert 0 < sink.peak_inflight <= 4 * MiB  # parts in flight share the one budget
    # Parts and intermediates are deleted as soon as the file is composed, before commit.
    assert [n for n in all_objects(s) if ".composite-parts/" in n] == []
    assert sink.commit() is True
    for rel, data in expected.items():
        assert read_all(s, f"{key}/{rel}") == data
        assert s.bucket.get_blob(s.key(f"{key}/{rel}")).crc32c == crc_b64(data)
    assert sorted(all_objects(s)) == sorted(f"{key}/{rel}" for rel in [*expected, "saved_model.pb"])


def test_abort_mid_composite_upload_leaves_no_part_objects(storage: GCSStorage) -> None:
    s = composite_storage(storage.root)
    key = "a" * 40
    sink = s.open_sink(key, f"{key}.4d4d.tmp")
    sink.add_file("saved_model.pb", 4, [b"mark"])
    parts_prefix = f"{key}.4d4d.tmp/.composite-parts/"

    def broken() -> Iterator[bytes]:
        yield from chunks_of(os.urandom(3 * MiB))
        deadline = time.monotonic() + 60
        while not any(n.startswith(parts_prefix) for n in all_objects(s)):  # some parts are really stored
            assert time.monotonic() < deadline, "no part was uploaded"
            time.sleep(0.05)
        raise OSError("archive cut off")

    with pytest.raises(OSError, match="cut off"):
        sink.add_file("variables/v.data", 8 * MiB, broken())
    sink.abort()
    assert all_objects(s) == {}


def test_a_composite_part_cut_off_is_sent_again(gcs_emulator: Any, gcs_cache: str) -> None:
    proxy = CutProxy(gcs_emulator.port)
    try:
        s = composite_storage(gcs_cache.replace("/cache", "/parts"), client=proxy.client())
        data = os.urandom(5 * MiB + 7)
        proxy.arm(cut_after=512 * 1024)  # one part's request breaks off halfway
        sink = s.open_sink("k", "k.1.tmp")
        sink.add_file("variables/v.data", len(data), chunks_of(data))
        sink.add_file("saved_model.pb", 2, [b"pb"])
        manifest = sink.finish()
        assert sink.commit() is True
        assert proxy.cuts == 1
        assert manifest["variables/v.data"].crc32c == crc_b64(data)
        assert read_all(s, "k/variables/v.data") == data
        assert sorted(all_objects(s)) == ["k/saved_model.pb", "k/variables/v.data"]
    finally:
        proxy.close()


def test_replace_keeps_the_old_model_until_commit(storage: GCSStorage) -> None:
    key = "0" * 40
    for rel, data in {"saved_model.pb": b"old-pb", "variables/v.data": b"old-data", "old_only.txt": b"x"}.items():
        storage.write_bytes(f"{key}/{rel}", data)
    sink = storage.open_sink(key, f"{key}.3333.tmp", replace=True)
    sink.add_file("saved_model.pb", 6, [b"new-pb"])
    sink.add_file("variables/v.data", 8, [b"new-data"])
    sink.finish()
    # Nothing of the old model changed yet: a failed refresh would leave it usable.
    assert storage.read_bytes(f"{key}/variables/v.data") == b"old-data"
    assert storage.read_bytes(f"{key}/saved_model.pb") == b"old-pb"
    assert sink.commit(replace=True) is True
    assert dict(storage.list_tree(key)) == {"saved_model.pb": 6, "variables/v.data": 8}
    assert storage.read_bytes(f"{key}/saved_model.pb") == b"new-pb"
    assert list(storage.list_tree(f"{key}.3333.tmp")) == []


# -- acceptance: staging into gs:// ------------------------------------------------------------------------


def test_gcs_stage_matches_local_cache_and_second_stage_is_a_hit(
    hub: Any, handle_of: Any, gcs_cache: str, cache_dir: str
) -> None:
    handle = handle_of("medium")
    local = stage(handle, cache_dir)
    hub.reset_stats()
    staged = stage(handle, gcs_cache)
    key = cache_key(handle)
    revision = f"{key}.revisions/{staged['revision']}"
    assert staged["path"] == f"{gcs_cache}/{revision}" and staged["cache_dir"] == gcs_cache
    assert staged["downloaded"] is True and staged["sha256"] == local["sha256"]
    assert (staged["files"], staged["bytes"]) == (local["files"], local["bytes"])
    assert archive_downloads(hub, "/google/medium/1") == 1

    storage = GCSStorage(gcs_cache)
    assert local["path"] is not None
    local_root = Path(local["path"])
    local_files = {p.relative_to(local_root).as_posix(): p.read_bytes() for p in local_root.rglob("*") if p.is_file()}
    assert dict(storage.list_tree(revision)) == {rel: len(data) for rel, data in local_files.items()}
    assert dict(storage.list_tree(key)) == dict(storage.list_tree(revision))  # tensorflow_hub's view: a copy
    for rel, data in local_files.items():
        assert read_all(storage, f"{revision}/{rel}") == data, rel
        assert read_all(storage, f"{key}/{rel}") == data, rel
    meta = assert_complete(storage, handle)
    local_meta = json.loads((Path(cache_dir) / f"{key}.meta.json").read_text())
    assert meta["manifest"] == local_meta["manifest"]  # same CRC32C: GCS's, checked against ours
    assert (storage.read_bytes(f"{key}.descriptor.txt") or b"").decode().startswith(f"Module: {handle}\n")
    assert leftovers(storage) == []
    assert is_cached(handle, gcs_cache)

    hub.reset_stats()
    again = stage(handle, gcs_cache)
    assert again["downloaded"] is False and again["path"] == staged["path"]
    assert hub.stats()["requests"] == 0


def test_gs_archive_handles_and_refresh_by_generation(
    hub: Any, model_archives: dict[str, Path], gcs_cache: str, cache_dir: str
) -> None:
    storage = GCSStorage(gcs_cache)
    archive_name = storage.key("archives/demo.tar.gz")
    handle = f"gs://{BUCKET}/{archive_name}"
    storage.bucket.blob(archive_name).upload_from_filename(str(model_archives["demo_v1"]))

    staged = stage(handle, f"{gcs_cache}/models")
    assert staged["downloaded"] is True and staged["etag"]
    assert staged["sha256"] == stage(handle, cache_dir)["sha256"]  # the same archive into a local cache
    unchanged = stage(handle, f"{gcs_cache}/models", refresh="if_changed")
    assert unchanged["downloaded"] is False  # same generation: one metadata request, no download

    storage.bucket.blob(archive_name).upload_from_filename(str(model_archives["demo_v2"]))
    refreshed = stage(handle, f"{gcs_cache}/models", refresh="if_changed")
    assert refreshed["downloaded"] is True and refreshed["refreshed"] is True
    assert refreshed["sha256"] != staged["sha256"] and refreshed["etag"] != staged["etag"]
    models = GCSStorage(f"{gcs_cache}/models")
    assert_complete(models, handle)
    assert leftovers(models) == []

    with pytest.raises(DownloadError, match="does not exist") as info:
        stage(f"gs://{BUCKET}/{storage.key('archives/missing.tar.gz')}", cache_dir)
    assert info.value.permanent is True


def test_eight_processes_stage_one_handle_with_one_download(
    hub: Any, handle_of: Any, gcs_cache: str, gcs_env: dict[str, str], tmp_path: Path
) -> None:
    handle = handle_of("demo_v1")
    hub.set_faults("/google/demo_v1/1", delay_s=2.0)  # the winner's download outlasts everyone's start
    go = tmp_path / "go"
    procs = [run_stage_subprocess(handle, gcs_cache, gcs_env, lock_timeout=30, wait_for=go) for _ in range(8)]
    try:
        for proc in procs:
            wait_ready(proc)
        go.touch()
        results = [result_of(proc) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert archive_downloads(hub, "/google/demo_v1/1") == 1
    assert len({r["path"] for r in results}) == 1
    assert results[0]["path"].startswith(f"{gcs_cache}/{cache_key(handle)}.revisions/")
    assert sum(r["downloaded"] for r in results) == 1
    assert len({r["sha256"] for r in results}) == 1
    assert not any(r["tensorflow_imported"] for r in results)
    storage = GCSStorage(gcs_cache)
    assert leftovers(storage) == []
    assert_complete(storage, handle)


def test_sigkill_holder_is_taken_over_and_readers_never_see_a_partial_model(
    hub: Any, handle_of: Any, gcs_cache: str, gcs_env: dict[str, str]
) -> None:
    handle = handle_of("medium")
    names = EntryNames(cache_key(handle))
    hub.set_faults("/google/medium/1", rate_bytes_per_s=1_500_000)  # ~5 s: the kill lands mid-transfer
    storage = GCSStorage(gcs_cache)

    problems: list[str] = []
    observed: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        """Our readers' view, polled throughout: an entry, when there is one, is the whole model."""
        mine = GCSStorage(gcs_cache)
        while not stop.is_set():
            try:
                entry = lookup_entry(mine, handle)
                if entry is not None:
                    meta = decode_meta(mine.read_bytes(names.meta)) or {}
                    listing = dict(mine.list_tree(tree_of(names, meta)))
                    if listing != {rel: rec["size"] for rel, rec in meta.get("manifest", {}).items()}:
                        problems.append(f"partial model visible: {sorted(listing)}")
                    observed.append(str(entry["staged_at"]))
            except Exception as exc:
                problems.append(repr(exc))
            time.sleep(0.05)

    watcher = threading.Thread(target=reader, daemon=True)
    watcher.start()
    holder = run_stage_subprocess(handle, gcs_cache, gcs_env, lock_timeout=3)
    try:
        deadline = time.monotonic() + 120
        while not (storage.stat(names.lock) is not None and storage.tree_is_nonempty(names.revisions)):
            assert holder.poll() is None, holder.communicate()
            assert time.monotonic() < deadline, "the holder never got going"
            time.sleep(0.05)
        holder.kill()  # SIGKILL while it streams: no cleanup, no lock release
        holder.wait()
    finally:
        if holder.poll() is None:
            holder.kill()
    partial = dict(storage.list_tree(names.revisions))
    assert partial and not any(r.endswith("variables.data-00000-of-00001") for r in partial)  # killed mid-download
    lock = parse_lock_content((storage.read_bytes(names.lock) or b"").decode())
    assert lock is not None and lock.pid == holder.pid  # the dead holder's lock is still there
    # What it left is an unpublished revision without its marker: tensorflow_hub's view does not exist
    # (a miss for it), and we see no entry.
    assert not storage.tree_is_nonempty(names.model)
    assert not any(r.endswith("saved_model.pb") for r in partial)
    assert lookup_entry(storage, handle) is None and observed == []

    hub.clear_faults()
    waiter = result_of(run_stage_subprocess(handle, gcs_cache, gcs_env, lock_timeout=3))
    deadline = time.monotonic() + 30
    while not observed and time.monotonic() < deadline:  # let the reader see the published entry
        time.sleep(0.05)
    stop.set()
    watcher.join()
    assert waiter["downloaded"] is True
    assert problems == []
    assert observed and set(observed) == {waiter["staged_at"]}
    assert archive_downloads(hub, "/google/medium/1") == 2  # the dead holder's and the waiter's
    assert leftovers(storage) == []
    revisions = {rel.partition("/")[0] for rel, _ in storage.list_tree(names.revisions)}
    assert revisions == {waiter["revision"], f"{waiter['revision']}.json"}  # the dead upload was swept
    assert_complete(storage, handle)


def test_stages_a_model_bigger_than_rlimit_fsize_and_its_tmpdir(
    hub: Any, big_archive: Path, gcs_cache: str, gcs_env: dict[str, str], tmp_path: Path
) -> None:
    limit = MiB
    tiny_tmp = tmp_path / "tiny-tmp"
    tiny_tmp.mkdir()
    handle = hub.add_archive("gcs_big.tar.gz", big_archive)
    prelude = f"""
        import errno, signal, tempfile
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        try:
            with tempfile.TemporaryFile() as probe:
                probe.write(b"x" * ({limit} + 1))
                probe.flush()
        except OSError as exc:
            assert exc.errno == errno.EFBIG, exc
        else:
            raise SystemExit("RLIMIT_FSIZE is not enforced here")
    """
    proc = run_stage_subprocess(handle, gcs_cache, {**gcs_env, "TMPDIR": str(tiny_tmp)}, prelude=prelude)
    result = result_of(proc)
    storage = GCSStorage(gcs_cache)
    sizes = dict(storage.list_tree(cache_key(handle)))
    assert sizes["variables/variables.data-00000-of-00001"] == 160 * MiB > limit
    assert result["bytes"] > 160 * MiB and result["files"] == 203
    assert_complete(storage, handle)
    assert list(tiny_tmp.iterdir()) == []
    # Streamed, never held: with the default settings the whole process peaked below 150 MiB, less
    # than the model it staged (runtime, client and decompressor take ~85 MB of that).
    assert result["peak_rss"] < 150 * MiB < 160 * MiB
    assert result["tensorflow_imported"] is False


# -- tensorflow_hub reads the gs:// cache we wrote -----------------------------------------------------------

TF_READER = """
import json, os, sys
import tensorflow as tf
import tensorflow_hub as hub
complete, partial = sys.argv[1], sys.argv[2]
model = hub.load(complete)
out = model.signatures["serving_default"](x=tf.zeros([1, 3]))["y"].numpy().tolist()
try:
    hub.load(partial)
    partial_result = "loaded"
except Exception as exc:
    partial_result = f"{type(exc).__name__}: {exc}"
print("RESULT " + json.dumps({"outputs": out, "partial": partial_result}))
"""


def test_tensorflow_hub_reads_our_gcs_cache_and_fails_on_a_partial_tree(
    hub: Any, handle_of: Any, model_archives: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tls_relay import tf_gcs

    from tfhub_cache.testing.models import expected_output

    complete, partial = handle_of("small_a"), handle_of("small_b")
    with tf_gcs(tmp_path / "tf-gcs") as gcs:
        gcs.emulator.create_bucket(BUCKET)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.emulator.endpoint)
        cache = f"gs://{BUCKET}/tfhub-cache"
        stage(complete, cache)
        # A stager that died after streaming the files but before publishing the marker.
        storage = GCSStorage(cache)
        key = cache_key(partial)
        sink = storage.open_sink(key, f"{key}.dead.tmp")
        model_dir = model_archives["small_b"].parent / "saved_model"
        for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
            data = path.read_bytes()
            sink.add_file(path.relative_to(model_dir).as_posix(), len(data), [data])
        sink.finish()  # never committed
        assert storage.tree_is_nonempty(key) and not storage.has_file(f"{key}/saved_model.pb")
        hub.reset_stats()
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(TF_READER), complete, partial],
            env={**os.environ, **gcs.env, "TFHUB_CACHE_DIR": cache, "TF_CPP_MIN_LOG_LEVEL": "2"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        result = json.loads(proc.stdout.rsplit("RESULT ", 1)[1])
        assert result["outputs"] == expected_output([[0.0, 0.0, 0.0]], scale=3.0, offset=0.5)
        # A load error naming the missing marker, never a silently partial model.
        assert result["partial"] != "loaded" and "saved_model.pb" in result["partial"], result
        assert hub.stats()["models"]["/google/small_a/1"]["archive_full"] == 0  # read from our cache
        assert gcs.relay.stats.refused == []


def test_gs_archive_is_read_as_parallel_ranges_of_one_generation(
    model_archives: dict[str, Path],
    gcs_cache: str,
    cache_dir: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 12: a gs:// archive handle is fetched as parallel ranged reads, pinned to one generation."""
    import hashlib

    from tfhub_cache.fetch.streams import RestartRequired

    monkeypatch.setenv("TFHUB_DOWNLOAD_PART_SIZE", str(512 << 10))
    storage = GCSStorage(gcs_cache)
    name = storage.key("archives/medium.tar.gz")
    old = model_archives["medium"].read_bytes()
    storage.bucket.blob(name).upload_from_filename(str(model_archives["medium"]))
    with caplog.at_level(logging.INFO, logger="tfhub_cache.fetch.ranged"):
        staged = stage(f"gs://{BUCKET}/{name}", cache_dir, download_connections=4)
    assert staged["sha256"] == hashlib.sha256(old).hexdigest()
    assert "with up to 4 connections in 15 parts" in caplog.text

    # Replaced mid-download: the pinned generation is gone, so the download restarts instead of mixing.
    stream = GCSArchiveSource(f"gs://{BUCKET}/{name}", client=storage.client, connections=2).open()
    assert stream is not None
    try:
        stream.read(1 << 20)
        storage.bucket.blob(name).upload_from_filename(str(model_archives["small_a"]))
        with pytest.raises(RestartRequired, match="disappeared during the download"):
            for _ in stream.chunks():
                pass
    finally:
        stream.close()
