"""A stager whose GCS requests stall gives up in bounded time, naming the stalled request, and
another stager takes over; nothing partial is ever published.

Stager A reaches the emulator through a loopback TCP proxy that stops forwarding once it has
carried part of A's upload (its connections stay open, silent: a stalled path, not a reset one).
A's lease renewals stall too, so its lease stops being renewed; B, talking to the emulator
directly, takes the lock over after ``lock_timeout`` and stages the model. A's requests time out
(``stall_timeout``, sized to each payload) and A fails with a message that names the request.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

from gcs_helpers import assert_complete, leftovers, make_synthetic_archive, result_of, run_stage_subprocess

from tfhub_cache.storage.gcs import GCSStorage

MiB = 1 << 20


class StallProxy:
    """Forwards to ``upstream_port`` until ``stall_after`` bytes went upstream (all connections
    together), then forwards nothing more, in either direction, on any connection, old or new."""

    def __init__(self, upstream_port: int, stall_after: int) -> None:
        self.upstream_port = upstream_port
        self.stall_after = stall_after
        self.carried = 0
        self.stalled = threading.Event()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()
        for sock in self._held:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._held.append(conn)
            if self.stalled.is_set():
                continue  # accepted, never answered
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._held.append(upstream)
            threading.Thread(target=self._pump, args=(conn, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, conn, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while not self.stalled.is_set() and (data := src.recv(1 << 16)):
                if upstream:
                    with self._lock:
                        self.carried += len(data)
                        if self.carried > self.stall_after:
                            self.stalled.set()
                if self.stalled.is_set():
                    return  # keep both sockets open and silent
                dst.sendall(data)
        except OSError:
            pass


def test_stalled_holder_gives_up_and_another_stager_takes_over(
    hub: Any, gcs_emulator: Any, gcs_cache: str, gcs_env: dict[str, str], model_archives: dict[str, Path]
) -> None:
    archive = make_synthetic_archive(
        model_archives["demo_v1"].parents[1] / "gcs_stall" / "model.tar.gz", big_bytes=24 * MiB, small_files=4
    )
    hub.add_model("/google/stall/1", archive)
    handle = f"{hub.url}/google/stall/1"
    proxy = StallProxy(gcs_emulator.port, stall_after=12 * MiB)  # mid-way through the 24 MiB file
    try:
        holder = run_stage_subprocess(
            handle,
            gcs_cache,
            {**gcs_env, "STORAGE_EMULATOR_HOST": proxy.url},
            lock_timeout=3,
            storage_options={"stall_timeout": 1.0},
        )
        assert proxy.stalled.wait(120), "the holder never got that far"
        started = time.monotonic()

        taker = result_of(run_stage_subprocess(handle, gcs_cache, gcs_env, lock_timeout=3), timeout=300)
        out, err = holder.communicate(timeout=300)
        gave_up_after = time.monotonic() - started
    finally:
        proxy.close()
        if holder.poll() is None:
            holder.kill()

    assert taker["downloaded"] is True
    assert holder.returncode != 0, out
    final = err.strip().splitlines()[-1]
    assert re.search(r"CacheError: GCS stopped answering while uploading \S+ in gs://", final), err[-3000:]
    assert gave_up_after < 120
    storage = GCSStorage(gcs_cache)
    meta = assert_complete(storage, handle)  # the tree is exactly the taker's manifest: nothing of the holder's
    assert meta["sha256"] == taker["sha256"]
    assert leftovers(storage) == []
