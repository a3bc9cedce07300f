"""Tests of the shipped test infrastructure (``tfhub_cache.testing``).

Everything else in the suite trusts these fakes, so they are tested against real clients: ``requests``,
urllib (what tensorflow_hub uses), tensorflow_hub itself, TensorFlow and google-cloud-storage.
Models are built once per session (a SavedModel costs seconds to build).
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3

from tfhub_cache.testing import models
from tfhub_cache.testing.gcs_emulator import GCSEmulator
from tfhub_cache.testing.hub import HubControl, HubServer, HubServerProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "/google/demo/1"
GS_LOCATION = "gs://tfhub-modules/google/demo/1/uncompressed"


# -- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def demo_archive(model_cache: Path) -> Path:
    """The default demo model (scale 2, offset 1) as a tfhub.dev-style .tar.gz."""
    return models.cached_model_archive(model_cache, "demo")


@pytest.fixture(scope="session")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 MiB of random bytes served as an "archive": HTTP-level tests don't need a real model."""
    path = tmp_path_factory.mktemp("blobs") / "blob.tar.gz"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 123))
    return path


@pytest.fixture
def hub(blob: Path) -> Iterator[HubServer]:
    with HubServer() as server:
        server.add_model(MODEL, blob, uncompressed_location=GS_LOCATION)
        yield server


def storage_url(hub: HubServer, path: str = MODEL) -> str:
    return f"{hub.storage_url}/storage{path}.tar.gz"


# -- hub server: protocol ----------------------------------------------------------------------------------


def test_compressed_redirect_chain_ends_with_archive(hub: HubServer, blob: Path) -> None:
    response = requests.get(hub.model_url(MODEL) + "?tf-hub-format=compressed", timeout=10)

    assert response.status_code == 200
    assert response.content == blob.read_bytes()
    assert [r.status_code for r in response.history] == [302, 302]
    assert response.history[1].url == f"{hub.url}/kaggle-redirect{MODEL}?tf-hub-format=compressed"
    assert response.url == storage_url(hub)
    assert hub.storage_port != hub.port
    headers = response.headers
    assert headers["Content-Type"] == "application/x-gzip"
    assert int(headers["Content-Length"]) == blob.stat().st_size
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"].startswith('"') and headers["ETag"].endswith('"')
    assert email.utils.parsedate_to_datetime(headers["Last-Modified"])
    counts = hub.stats()["models"][MODEL]
    assert (counts["compressed"], counts["redirect"], counts["archive_full"]) == (1, 1, 1)
    assert counts["bytes_sent"] == blob.stat().st_size


def test_same_origin_storage_is_configurable(hub: HubServer, blob: Path) -> None:
    hub.add_model("/google/same/1", blob, separate_storage=False)
    response = requests.get(hub.model_url("/google/same/1") + "?tf-hub-format=compressed", timeout=10)
    assert response.url == f"{hub.url}/storage/google/same/1.tar.gz"
    assert response.content == blob.read_bytes()


def test_urllib_follows_chain_with_duplicate_format_query(hub: HubServer, blob: Path) -> None:
    # tensorflow_hub appends its pair after any existing tf-hub-format; the last one wins.
    url = hub.model_url(MODEL) + "?extra=1&tf-hub-format=test&tf-hub-format=compressed"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == blob.read_bytes()


def test_page_unknown_paths_and_uncompressed(hub: HubServer, blob: Path) -> None:
    page = requests.get(hub.model_url(MODEL), timeout=10)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert b"<html>" in page.content
    assert requests.get(hub.url + "/google/nope/1?tf-hub-format=compressed", timeout=10).status_code == 404
    assert requests.get(hub.url + "/kaggle-redirect/google/nope/1", timeout=10).status_code == 404
    assert requests.get(hub.url + "/archives/nope.tar.gz", timeout=10).status_code == 404

    response = requests.get(hub.model_url(MODEL) + "?tf-hub-format=uncompressed", allow_redirects=False)
    assert response.status_code == 303
    assert response.text == GS_LOCATION
    assert "Location" not in response.headers
    # What tensorflow_hub's UncompressedModelResolver does: urllib raises HTTPError(303), body is the path.
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(hub.model_url(MODEL) + "?tf-hub-format=uncompressed", timeout=10)
    assert excinfo.value.code == 303
    assert excinfo.value.read().decode() == GS_LOCATION

    hub.add_model("/google/nogs/1", blob)
    assert requests.get(hub.url + "/google/nogs/1?tf-hub-format=uncompressed").status_code == 404
    counts = hub.stats()["models"]
    assert counts[MODEL]["page"] == 1 and counts[MODEL]["uncompressed"] == 2
    assert hub.stats()["not_found"] == 3


def test_direct_archive_url_with_format_query(hub: HubServer, blob: Path) -> None:
    url = hub.add_archive("demo-1.tar.gz", blob)
    assert url == f"{hub.url}/archives/demo-1.tar.gz"
    for suffix in ("", "?tf-hub-format=compressed"):
        response = requests.get(url + suffix, timeout=10)
        assert response.status_code == 200 and response.content == blob.read_bytes()
    assert hub.stats()["models"]["/archives/demo-1.tar.gz"]["archive_full"] == 2


def test_ranges(hub: HubServer, blob: Path) -> None:
    data, url = blob.read_bytes(), storage_url(hub)
    size = len(data)
    r = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
    assert r.status_code == 206 and r.content == data[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{size}"
    assert r.headers["Content-Length"] == "10"
    r = requests.get(url, headers={"Range": f"bytes={size - 100}-"}, timeout=10)
    assert r.status_code == 206 and r.content == data[-100:]
    r = requests.get(url, headers={"Range": "bytes=-7"}, timeout=10)
    assert r.status_code == 206 and r.content == data[-7:]
    r = requests.get(url, headers={"Range": f"bytes=5-{size * 2}"}, timeout=10)  # end clamped
    assert r.status_code == 206 and r.content == data[5:]
    r = requests.get(url, headers={"Range": f"bytes={size}-"}, timeout=10)
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{size}"

    etag = r.headers.get("ETag") or requests.head(url, timeout=10).headers["ETag"]
    r = requests.get(url, headers={"Range": "bytes=100-", "If-Range": etag}, timeout=10)
    assert r.status_code == 206 and r.content == data[100:]
    r = requests.get(url, headers={"Range": "bytes=100-", "If-Range": '"stale"'}, timeout=10)
    assert r.status_code == 200 and r.content == data
    counts = hub.stats()["models"][MODEL]
    assert counts["archive_range"] == 5 and counts["archive_full"] == 1 and counts["head"] <= 1


def test_conditional_requests_and_head(hub: HubServer, blob: Path) -> None:
    url = storage_url(hub)
    head = requests.head(url, timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) == blob.stat().st_size
    etag, last_modified = head.headers["ETag"], head.headers["Last-Modified"]

    r = requests.get(url, headers={"If-None-Match": etag}, timeout=10)
    assert r.status_code == 304 and r.content == b"" and r.headers["ETag"] == etag
    r = requests.get(url, headers={"If-Modified-Since": last_modified}, timeout=10)
    assert r.status_code == 304
    r = requests.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}, timeout=10)
    assert r.status_code == 200 and len(r.content) == blob.stat().st_size
    r = requests.get(url, headers={"If-None-Match": '"other"', "If-Modified-Since": last_modified}, timeout=10)
    assert r.status_code == 200  # If-None-Match wins over If-Modified-Since
    counts = hub.stats()["models"][MODEL]
    assert counts["not_modified"] == 2 and counts["head"] == 1 and counts["archive_full"] == 2


def test_validators_change_when_archive_replaced(hub: HubServer, blob: Path, tmp_path: Path) -> None:
    url = storage_url(hub)
    first = requests.head(url, timeout=10).headers

    other = tmp_path / "other.tar.gz"
    other.write_bytes(b"new upstream version")
    hub.add_model(MODEL, other, uncompressed_location=GS_LOCATION)
    second = requests.get(url, headers={"If-None-Match": first["ETag"]}, timeout=10)
    assert second.status_code == 200 and second.content == b"new upstream version"
    assert second.headers["ETag"] != first["ETag"]
    lm = [email.utils.parsedate_to_datetime(h["Last-Modified"]) for h in (first, second.headers)]
    assert lm[1] > lm[0]
    r = requests.get(url, headers={"If-Modified-Since": first["Last-Modified"]}, timeout=10)
    assert r.status_code == 200

    # Overwriting the file in place (no re-registration) changes the validators too.
    other.write_bytes(b"overwritten in place, longer")
    third = requests.get(url, headers={"If-None-Match": second.headers["ETag"]}, timeout=10)
    assert third.status_code == 200 and third.content == b"overwritten in place, longer"
    assert third.headers["ETag"] != second.headers["ETag"]
    assert email.utils.parsedate_to_datetime(third.headers["Last-Modified"]) > lm[1]


# -- hub server: faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429, 404, 403])
def test_fault_fail_times(hub: HubServer, blob: Path, status: int) -> None:
    hub.set_faults(MODEL, fail_times=2, fail_status=status, retry_after=1)
    chain = hub.model_url(MODEL) + "?tf-hub-format=compressed"
    for _ in range(2):
        r = requests.get(chain, timeout=10)
        assert r.status_code == status and r.headers["Retry-After"] == "1"
    assert requests.get(chain, timeout=10).content == blob.read_bytes()
    counts = hub.stats()["models"][MODEL]
    assert counts["faulted"] == 2 and counts["archive_full"] == 1 and counts["compressed"] == 3


def test_fault_fail_on_first_hop_and_wildcard(hub: HubServer, blob: Path) -> None:
    hub.set_faults("*", fail_times=-1, fail_status=503, fail_on="compressed")
    r = requests.get(hub.model_url(MODEL) + "?tf-hub-format=compressed", timeout=10)
    assert r.status_code == 503 and not r.history
    assert requests.get(storage_url(hub), timeout=10).status_code == 200  # archive hop unaffected
    hub.clear_faults()
    assert requests.get(hub.model_url(MODEL) + "?tf-hub-format=compressed", timeout=10).status_code == 200


def test_fault_cut_then_resume(hub: HubServer, blob: Path) -> None:
    data, url = blob.read_bytes(), storage_url(hub)
    hub.set_faults(MODEL, cut_after_bytes=100_000, cut_times=1)
    with requests.get(url, stream=True, timeout=10) as r:
        assert r.headers["Content-Length"] == str(len(data))  # full length promised
        received = r.raw.read(100_000)
        with pytest.raises(urllib3.exceptions.ProtocolError):  # then the connection is closed
            r.raw.read(1)
    assert received == data[:100_000]
    rest = requests.get(url, headers={"Range": f"bytes={len(received)}-"}, timeout=10)
    assert rest.status_code == 206 and bytes(received) + rest.content == data
    assert requests.get(url, timeout=10).content == data  # cut_times exhausted
    assert hub.stats()["models"][MODEL]["bytes_sent"] == 100_000 + len(data) - 100_000 + len(data)


def test_fault_no_range(hub: HubServer, blob: Path) -> None:
    hub.set_faults(MODEL, no_range=True)
    r = requests.get(storage_url(hub), headers={"Range": "bytes=10-"}, timeout=10)
    assert r.status_code == 200 and r.content == blob.read_bytes()
    assert "Accept-Ranges" not in r.headers


def test_fault_html_instead(hub: HubServer) -> None:
    hub.set_faults(MODEL, html_instead=True)
    r = requests.get(hub.model_url(MODEL) + "?tf-hub-format=compressed", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert r.content.lstrip().startswith(b"<!DOCTYPE html>")


def test_fault_truncate_to(hub: HubServer, blob: Path) -> None:
    hub.set_faults(MODEL, truncate_to=4096)
    r = requests.get(storage_url(hub), timeout=10)
    assert r.status_code == 200 and r.headers["Content-Length"] == "4096"
    assert r.content == blob.read_bytes()[:4096]


def test_fault_delay_rate_and_stall(hub: HubServer) -> None:
    url = storage_url(hub)
    hub.set_faults(MODEL, delay_s=0.6)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(url, timeout=(5, 0.2))

    hub.set_faults(MODEL, rate_bytes_per_s=2_000_000, truncate_to=500_000)
    started = time.monotonic()
    assert len(requests.get(url, timeout=10).content) == 500_000
    assert time.monotonic() - started >= 0.2

    hub.set_faults(MODEL, stall_after_bytes=1000, stall_s=1.5)
    started = time.monotonic()
    with requests.get(url, stream=True, timeout=(5, 0.3)) as r:
        assert len(r.raw.read(1000)) == 1000
        with pytest.raises(urllib3.exceptions.ReadTimeoutError):
            r.raw.read(1)
    assert time.monotonic() - started < 1.4


def test_fault_validation(hub: HubServer) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        hub.set_faults(MODEL, fail_tims=1)
    r = requests.post(hub.url + "/_control/faults", json={"path": MODEL, "bogus": 1}, timeout=10)
    assert r.status_code == 400 and "bogus" in r.json()["error"]


# -- hub server: stats, control, concurrency ---------------------------------------------------------------


def test_stats_record_authorization_per_listener(hub: HubServer, blob: Path) -> None:
    auth = {"Authorization": "Bearer secret"}
    requests.get(hub.model_url(MODEL) + "?tf-hub-format=compressed", headers=auth, timeout=10)
    records = hub.stats()["recent"]
    assert [(r["listener"], r["status"]) for r in records] == [("main", 302), ("main", 302), ("storage", 200)]
    assert records[0]["query"] == "tf-hub-format=compressed"
    assert records[0]["headers"] == auth and records[1]["headers"] == auth
    assert "Authorization" not in records[2]["headers"]  # requests drops it on the cross-origin hop

    requests.get(storage_url(hub), headers={**auth, "Range": "bytes=0-0"}, timeout=10)
    last = hub.records(f"/storage{MODEL}.tar.gz")[-1]
    assert last["headers"] == {**auth, "Range": "bytes=0-0"} and last["status"] == 206
    stats = hub.stats()
    assert stats["requests"] == 4 and stats["by_listener"] == {"main": 2, "storage": 2}

    hub.reset_stats()
    stats = hub.stats()
    assert stats["requests"] == 0 and stats["recent"] == []
    assert stats["models"][MODEL] == dict.fromkeys(stats["models"][MODEL], 0)


def test_control_endpoints_via_http(hub: HubServer, blob: Path) -> None:
    control = HubControl(hub.url)
    assert control.add_model("/other/model/2", blob, uncompressed_location="gs://b/o") == (hub.url + "/other/model/2")
    control.add_archive("x.tar.gz", blob)
    info = control.info()
    assert info["storage_url"] == hub.storage_url and "/other/model/2" in info["models"]
    control.set_faults("/other/model/2", fail_times=1, fail_status=503)
    chain = hub.url + "/other/model/2?tf-hub-format=compressed"
    assert requests.get(chain, timeout=10).status_code == 503
    control.set_faults("/other/model/2", fail_times=1, fail_status=500)
    control.clear_faults()
    assert requests.get(chain, timeout=10).status_code == 200
    stats = control.stats()
    assert stats["models"]["/other/model/2"]["faulted"] == 1
    assert stats["models"]["/other/model/2"]["archive_full"] == 1
    assert stats["requests"] == 6  # control calls are not counted
    control.reset_stats()
    assert control.stats()["requests"] == 0


def test_concurrent_clients_and_mid_body_disconnects(
    hub: HubServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big.tar.gz"
    big.write_bytes(os.urandom(8 * 1024 * 1024))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    hub.add_model("/google/big/1", big)
    chain = hub.url + "/google/big/1?tf-hub-format=compressed"

    def full() -> str:
        return hashlib.sha256(requests.get(chain, timeout=30).content).hexdigest()

    def abandon() -> int:
        with requests.get(chain, stream=True, timeout=30) as r:
            chunk = next(r.iter_content(100_000))
        return len(chunk)  # closing the response mid-body drops the connection

    with ThreadPoolExecutor(max_workers=12) as pool:
        fulls = [pool.submit(full) for _ in range(16)]
        abandons = [pool.submit(abandon) for _ in range(8)]
        assert {f.result() for f in fulls} == {digest}
        assert all(a.result() > 0 for a in abandons)
    assert full() == digest  # still healthy
    counts = hub.stats()["models"]["/google/big/1"]
    assert counts["archive_full"] == 25
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "GET /" not in err


def test_stop_closes_listeners(blob: Path) -> None:
    server = HubServer().start()
    url = server.url
    assert requests.get(url + "/", timeout=5).status_code == 200
    server.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url + "/", timeout=5)


# -- hub server: subprocess mode ---------------------------------------------------------------------------


def test_subprocess_mode(tmp_path: Path, blob: Path) -> None:
    root = tmp_path / "root"
    (root / "google" / "demo").mkdir(parents=True)
    shutil.copy(blob, root / "google" / "demo" / "1.tar.gz")
    port_file = tmp_path / "port"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "tfhub_cache.testing.hub", "--root", str(root)]
    proc = subprocess.Popen(
        [*cmd, "--port-file", str(port_file), "--uncompressed-prefix", "gs://tfhub-modules"],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        url = line.split()[1]
        assert url.endswith(":" + port_file.read_text().strip())
        r = requests.get(url + "/google/demo/1?tf-hub-format=compressed", timeout=10)
        assert r.content == blob.read_bytes() and r.history
        gs = requests.get(url + "/google/demo/1?tf-hub-format=uncompressed", allow_redirects=False)
        assert gs.status_code == 303 and gs.text == "gs://tfhub-modules/google/demo/1/uncompressed"
        assert requests.get(url + "/archives/google/demo/1.tar.gz", timeout=10).content == blob.read_bytes()

        control = HubControl(url)
        control.set_faults("/google/demo/1", fail_times=1, fail_status=429)
        assert requests.get(url + "/google/demo/1?tf-hub-format=compressed", timeout=10).status_code == 429
        stats = control.stats()
        assert stats["models"]["/google/demo/1"]["faulted"] == 1
        assert stats["models"]["/google/demo/1"]["archive_full"] == 1
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0

    with HubServerProcess(root) as server:  # the helper benchmarks use
        assert requests.get(server.url + "/google/demo/1", timeout=10).status_code == 200
        assert "/google/demo/1" in server.control.info()["models"]


# -- the server against tensorflow_hub itself --------------------------------------------------------------


def test_tensorflow_hub_resolves_through_server(
    demo_archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "tfhub_cache"))
    monkeypatch.delenv("TFHUB_MODEL_LOAD_FORMAT", raising=False)
    hub_lib = pytest.importorskip("tensorflow_hub")
    with HubServer() as server:
        server.add_model(MODEL, demo_archive)
        handle = server.model_url(MODEL)
        path = Path(hub_lib.resolve(handle))
        assert path.name == hashlib.sha1(handle.encode()).hexdigest()
        assert (path / "saved_model.pb").is_file()
        assert (path / "variables" / "variables.index").is_file()
        counts = server.stats()["models"][MODEL]
        assert (counts["compressed"], counts["redirect"], counts["archive_full"]) == (1, 1, 1)
        model = hub_lib.load(handle)
        assert model([[1.0, 2.0, 3.0]]).numpy().tolist() == [[3.0, 5.0, 7.0]]


# -- models ------------------------------------------------------------------------------------------------


def test_archive_layout_and_saved_model_outputs(demo_archive: Path) -> None:
    import tensorflow as tf

    with tarfile.open(demo_archive, "r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[0] == "."
    assert all(n == "." or n.startswith("./") for n in names)
    assert {"./saved_model.pb", "./variables/variables.index"} <= set(names)
    assert any(n.startswith("./variables/variables.data-") for n in names)
    assert all(m.isreg() or m.isdir() for m in members)
    assert all(m.uid == 0 and m.uname == "" for m in members)

    model = tf.saved_model.load(str(demo_archive.parent / "saved_model"))
    assert model(tf.zeros([2, 3])).numpy().tolist() == [[1.0] * 3] * 2  # zeros -> offset
    y = model.signatures["serving_default"](x=tf.constant([[1.0, 2.0, 3.0]]))["y"]
    assert y.numpy().tolist() == models.expected_output([[1, 2, 3]]) == [[3.0, 5.0, 7.0]]


def test_custom_model_params_and_extra_variable(model_cache: Path) -> None:
    import tensorflow as tf

    archive = models.cached_model_archive(model_cache, "scaled", scale=3.0, offset=-1.0, num_params=250_000)
    started = time.monotonic()
    assert models.cached_model_archive(model_cache, "scaled", scale=3.0, offset=-1.0, num_params=250_000) == (archive)
    assert time.monotonic() - started < 0.5  # cached
    assert archive.stat().st_size > 900_000  # random weights barely compress
    model = tf.saved_model.load(str(archive.parent / "saved_model"))
    assert model.extra.shape == (250_000,)
    out = model(tf.constant([[0.0, 1.0, 2.0]])).numpy().tolist()
    assert out == models.expected_output([[0, 1, 2]], scale=3.0, offset=-1.0) == [[-1.0, 2.0, 5.0]]


def test_make_archive_uncompressed(demo_archive: Path, tmp_path: Path) -> None:
    plain = models.make_archive(demo_archive.parent / "saved_model", tmp_path / "m.tar", compression="none")
    with open(plain, "rb") as handle:
        assert handle.read(2) != b"\x1f\x8b"
    with tarfile.open(plain, "r:") as tar:
        assert "./saved_model.pb" in tar.getnames()
    again = models.make_archive(demo_archive.parent / "saved_model", tmp_path / "again.tar.gz")
    assert again.read_bytes() == demo_archive.read_bytes()  # deterministic


def _stream_members(path: Path, stop_at_size: int = 1 << 30) -> list[tarfile.TarInfo]:
    """Headers in archive order, without decompressing the data of a huge member."""
    members = []
    with tarfile.open(path, "r|gz") as tar:
        for member in tar:
            members.append(member)
            if member.size >= stop_at_size:
                break
    return members


@pytest.mark.parametrize("kind", [k for k in models.MALICIOUS_KINDS if k != "bomb"])
def test_malicious_archives(kind: str, tmp_path: Path) -> None:
    path = models.make_malicious_archive(tmp_path / f"{kind}.tar.gz", kind)
    members = {m.name: m for m in _stream_members(path)}
    if kind == "no_model":
        assert list(members) == ["./README.txt"]
        return
    assert members["./saved_model.pb"].isreg()
    evil = list(members.values())[-1]
    if kind == "traversal":
        assert evil.name == "../evil.txt" and evil.isreg()
    elif kind == "traversal_nested":
        assert evil.name == "./variables/../../evil.txt"
    elif kind == "absolute":
        assert evil.name.startswith("/tmp/evil-") and evil.name.endswith(".txt")
        assert not Path(evil.name).exists()
    elif kind == "symlink":
        assert evil.issym() and evil.linkname == "/etc/passwd"
    elif kind == "hardlink":
        assert evil.islnk() and evil.linkname == "/etc/passwd"
    elif kind == "device":
        assert evil.ischr() and (evil.devmajor, evil.devminor) == (1, 3)


def test_bomb_archive(tmp_path: Path) -> None:
    started = time.monotonic()
    bomb = models.make_malicious_archive(tmp_path / "bomb.tar.gz", "bomb")
    assert time.monotonic() - started < 10
    assert bomb.stat().st_size < 4 * 1024 * 1024
    members = _stream_members(bomb)
    assert members[1].name == "./saved_model.pb"
    assert members[-1].name == "./variables/variables.data-00000-of-00001"
    assert members[-1].size == 2 << 30

    # A small one, read to the end: the gzip CRC/size trailer and the zeros are right.
    small = models.make_malicious_archive(tmp_path / "small.tar.gz", "bomb", bomb_size=(16 << 20) + 5)
    with tarfile.open(small, "r:gz") as tar:
        member = tar.getmember("./variables/variables.data-00000-of-00001")
        handle = tar.extractfile(member)
        assert handle is not None
        data = handle.read()
    assert len(data) == (16 << 20) + 5 and data.count(0) == len(data)


def test_make_html_page(tmp_path: Path) -> None:
    page = models.make_html_page(tmp_path / "page.html")
    assert page.read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(tarfile.ReadError):
        tarfile.open(fileobj=io.BytesIO(page.read_bytes()), mode="r|*")


# -- GCS emulator ------------------------------------------------------------------------------------------


def test_gcs_emulator_roundtrip_and_precondition(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from google.api_core.exceptions import PreconditionFailed
    from google.cloud import storage

    with GCSEmulator(data_dir=tmp_path / "gcs") as gcs:
        assert gcs.endpoint.startswith("http://127.0.0.1:")
        env = gcs.env()
        assert env["STORAGE_EMULATOR_HOST"] == gcs.endpoint and env["NO_GCE_CHECK"] == "true"
        gcs.create_bucket("models")
        gcs.create_bucket("models")  # exist_ok
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        client = storage.Client()
        blob = client.bucket("models").blob("google/demo/1/saved_model.pb")
        blob.upload_from_string(b"payload", if_generation_match=0)
        assert blob.download_as_bytes() == b"payload"
        with pytest.raises(PreconditionFailed):
            client.bucket("models").blob(blob.name).upload_from_string(b"again", if_generation_match=0)
        assert gcs.client().bucket("models").blob(blob.name).download_as_bytes() == b"payload"
        assert (tmp_path / "gcs" / "models").is_dir()
        pid = gcs.pid
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_gcs_emulator_cli(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "tfhub_cache.testing.gcs_emulator", "--data", str(tmp_path / "d")]
    proc = subprocess.Popen(
        [*cmd, "--bucket", "b1"],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        endpoint = line.split()[1]
        with urllib.request.urlopen(endpoint + "/storage/v1/b", timeout=10) as response:
            buckets: Any = json.load(response)
        assert [b["name"] for b in buckets["items"]] == ["b1"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0


def test_threads_not_leaked() -> None:
    """A stopped server leaves no serve_forever threads behind (others' session servers may run)."""
    before = {t for t in threading.enumerate() if t.name.startswith("hub-server-")}
    server = HubServer().start()
    assert {t for t in threading.enumerate() if t.name.startswith("hub-server-")} > before
    server.stop()
    assert {t for t in threading.enumerate() if t.name.startswith("hub-server-")} <= before
