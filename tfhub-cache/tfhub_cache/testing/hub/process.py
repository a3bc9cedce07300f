"""The test hub as a subprocess (``python -m tfhub_cache.testing.hub``), started and stopped from Python."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from tfhub_cache.testing.hub.control import HubControl

MODULE = "tfhub_cache.testing.hub"
"""What ``python -m`` runs: the package's ``__main__``."""


class HubServerProcess:
    """Run the hub server as a subprocess (``python -m ...hub_server``) and wait for its ``READY`` line.

    For benchmarks with many client processes, where an in-process server would compete for the GIL
    with the code being measured. ``control`` is a :class:`HubControl` for it.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        port: int = 0,
        uncompressed_prefix: str | None = None,
        verbose: bool = False,
        startup_timeout: float = 30.0,
        bandwidth_bytes_per_s: float | None = None,
        latency_s: float = 0.0,
    ) -> None:
        self.root = root
        self.bandwidth_bytes_per_s = bandwidth_bytes_per_s
        self.latency_s = latency_s
        self.port = port
        self.uncompressed_prefix = uncompressed_prefix
        self.verbose = verbose
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> HubServerProcess:
        cmd = [sys.executable, "-m", MODULE, "--port", str(self.port)]
        if self.root is not None:
            cmd += ["--root", str(self.root)]
        if self.uncompressed_prefix:
            cmd += ["--uncompressed-prefix", self.uncompressed_prefix]
        if self.verbose:
            cmd.append("--verbose")
        if self.bandwidth_bytes_per_s:
            cmd += ["--bandwidth-per-connection", f"{self.bandwidth_bytes_per_s / 1e6:g}"]
        if self.latency_s:
            cmd += ["--latency-ms", f"{self.latency_s * 1e3:g}"]
        env = dict(os.environ)
        # Make the package importable in the child even when it is not installed (running from a checkout).
        package_parent = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
        assert self.process.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.process.stdout, selectors.EVENT_READ)
            while b"\n" not in line:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"hub server did not print READY (got {line!r})")
                if sel.select(timeout=min(remaining, 0.5)):
                    # os.read, not stdout.read: a buffered read would hide data from select().
                    line += os.read(self.process.stdout.fileno(), 4096)
        text = line.decode().splitlines()[0].strip()
        if not text.startswith("READY "):
            self.stop()
            raise RuntimeError(f"unexpected first line from hub server: {text!r}")
        self.url = text.split()[1]
        return self

    @property
    def control(self) -> HubControl:
        return HubControl(self.url)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> HubServerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
