"""Helpers and fixtures for the gs:// cache tests: the emulator, synthetic archives, subprocess stagers.

Synthetic archives carry a placeholder ``saved_model.pb`` and incompressible "variables", so a model
of any size is built in seconds without TensorFlow (staging never parses the SavedModel; the real
SavedModels of ``tests/conftest.py`` cover loading).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tfhub_cache.cache.layout import EntryNames, decode_meta, tree_of
from tfhub_cache.cache.records import EntryMeta
from tfhub_cache.handles import cache_key
from tfhub_cache.storage.gcs import GCSStorage
from tfhub_cache.testing.gcs_emulator import GCSEmulator
from tfhub_cache.testing.models import PLACEHOLDER_SAVED_MODEL

PY = sys.executable
BUCKET = "tfhub-gcs-test"


# -- fixtures (a pytest plugin: tests/conftest.py lists this module in pytest_plugins) -------------------


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GCSEmulator]:
    """One fake-gcs-server per test session, on a free loopback port; stopped by its PID."""
    with GCSEmulator() as emulator:
        emulator.create_bucket(BUCKET)
        yield emulator


@pytest.fixture
def gcs_env(gcs_emulator: GCSEmulator, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """``STORAGE_EMULATOR_HOST`` & co. in this process (in-process staging, ``dag.test()``) and for subprocesses."""
    env = gcs_emulator.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def gcs_cache(gcs_env: dict[str, str]) -> str:
    """A fresh ``gs://`` cache dir per test (tests share the bucket, never a prefix)."""
    return f"gs://{BUCKET}/{uuid.uuid4().hex[:12]}/cache"


# -- inspecting a gs:// cache ----------------------------------------------------------------------------


def all_objects(storage: GCSStorage) -> dict[str, int]:
    """Every object under the cache root: name relative to the root -> size."""
    base = storage.key("") + "/"
    return {b.name[len(base) :]: int(b.size) for b in storage.client.list_blobs(storage.bucket_name, prefix=base)}


def leftovers(storage: GCSStorage) -> list[str]:
    """Lock and temporary objects: none may survive a staging, successful or not."""
    return sorted(n for n in all_objects(storage) if n.endswith(".lock") or ".tmp/" in n)


def assert_complete(storage: GCSStorage, handle: str) -> EntryMeta:
    """The entry is complete for our readers and its model tree is exactly the metadata's manifest."""
    names = EntryNames(cache_key(handle))
    meta = decode_meta(storage.read_bytes(names.meta))
    assert meta is not None, f"no metadata for {handle}"
    tree = tree_of(names, meta)
    listing = dict(storage.list_tree(tree))
    assert listing == {rel: rec["size"] for rel, rec in meta["manifest"].items()}
    assert storage.has_file(f"{tree}/{meta['marker']}")
    return meta


def make_synthetic_archive(path: Path, *, big_bytes: int, small_files: int = 0, seed: int = 0) -> Path:
    """A tfhub-style ``.tar.gz`` with ``variables/variables.data-00000-of-00001`` of ``big_bytes`` random bytes.

    Also: ``saved_model.pb`` (placeholder), ``variables/variables.index``, an empty ``assets/`` dir and
    ``small_files`` small files under ``assets.extra/``. Deterministic for a given ``seed``; built once.
    """
    if path.exists():
        return path
    import random

    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")

    def add_dir(tar: tarfile.TarFile, name: str) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)

    def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    class _Random(io.RawIOBase):
        def __init__(self, size: int) -> None:
            self.left = size

        def readable(self) -> bool:
            return True

        def readinto(self, buf: Any) -> int:
            n = min(len(buf), self.left, 1 << 20)
            buf[:n] = rng.randbytes(n)
            self.left -= n
            return n

    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            add_dir(tar, ".")
            add_bytes(tar, "./saved_model.pb", PLACEHOLDER_SAVED_MODEL)
            add_dir(tar, "./assets")
            add_dir(tar, "./variables")
            add_bytes(tar, "./variables/variables.index", rng.randbytes(4096))
            info = tarfile.TarInfo("./variables/variables.data-00000-of-00001")
            info.size = big_bytes
            tar.addfile(info, io.BufferedReader(_Random(big_bytes), 1 << 20))
            if small_files:
                add_dir(tar, "./assets.extra")
                for i in range(small_files):
                    add_bytes(tar, f"./assets.extra/f{i:04d}.bin", rng.randbytes(rng.randint(1, 64 * 1024)))
    os.replace(tmp, path)
    return path


def run_stage_subprocess(
    handle: str,
    cache_dir: str,
    env: dict[str, str],
    *,
    lock_timeout: float | None = None,
    prelude: str = "",
    wait_for: Path | None = None,
    storage_options: dict[str, Any] | None = None,
) -> subprocess.Popen[str]:
    """Start ``python -c`` that calls ``core.staging.stage`` and prints the result as JSON on its last line.

    ``prelude`` runs first (rlimits...); ``wait_for`` makes the process import everything, print
    ``READY`` and wait until that file exists, so that several processes start staging together.
    """
    code = textwrap.dedent(
        """
        import json, os, resource, sys, time
        {prelude}
        from tfhub_cache.cache.staging import stage
        import tfhub_cache.storage.gcs, google.cloud.storage
        go = {wait_for!r}
        if go:
            print("READY", flush=True)
            while not os.path.exists(go):
                time.sleep(0.01)
        result = stage({handle!r}, {cache_dir!r}, lock_timeout={lock_timeout!r}, storage_options={options!r})
        # VmHWM: peak RSS of this program (ru_maxrss would include the forked pytest before exec).
        status = open("/proc/self/status").read()
        result["peak_rss"] = int(status.split("VmHWM:")[1].split()[0]) * 1024
        result["tensorflow_imported"] = "tensorflow" in sys.modules
        print(json.dumps(result), flush=True)
        """
    ).format(
        prelude=textwrap.dedent(prelude),
        handle=handle,
        cache_dir=cache_dir,
        lock_timeout=lock_timeout,
        options=storage_options or {},
        wait_for=str(wait_for) if wait_for else None,
    )
    return subprocess.Popen(
        [PY, "-c", code],
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_ready(proc: subprocess.Popen[str], timeout: float = 120.0) -> None:
    """Block until a :func:`run_stage_subprocess` process printed READY."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        _out, err = proc.communicate(timeout=timeout)
        raise AssertionError(f"stager did not start: {line!r}\n{err[-3000:]}")


def result_of(proc: subprocess.Popen[str], timeout: float = 300.0) -> dict[str, Any]:
    """Wait for a stager subprocess and return its result dict (fails with its stderr otherwise)."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"stager failed ({proc.returncode}):\n{err[-4000:]}"
    return dict(json.loads(out.strip().splitlines()[-1]))


class CutProxy:
    """A loopback TCP proxy to the emulator that drops a connection once it has carried ``cut_after`` bytes upstream.

    Real dropped connections, for the resume path of streamed uploads (clients reach the emulator
    through :attr:`url`; fake-gcs-server builds resumable session URLs from the Host it was asked
    on, so those go through the proxy too). :meth:`arm` sets how many connections, among those opened
    after it, get cut; use a fresh client after arming so that no pooled connection is reused.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after = 0
        self.cuts_left = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def arm(self, cut_after: int, times: int = 1) -> None:
        with self._lock:
            self.cut_after, self.cuts_left = cut_after, times

    def client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        options = {"api_endpoint": self.url}
        return storage.Client(project="test", credentials=AnonymousCredentials(), client_options=options)

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                armed = self.cuts_left > 0  # only connections opened after arm() are cut
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(conn, upstream, armed), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, conn, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, armed: bool) -> None:
        carried = 0
        try:
            while data := src.recv(1 << 16):
                carried += len(data)
                if armed and carried > self.cut_after:
                    with self._lock:
                        cut = self.cuts_left > 0
                        if cut:
                            self.cuts_left -= 1
                            self.cuts += 1
                    if cut:
                        break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
