"""``core/locks.py``: one stager per cache entry, across processes and machines, with leases.

A lock whose holder ran on this host and whose process is gone (or a newer process reuses its PID)
is stale at once; an empty lock has no holder; a remote holder keeps its lock while it renews the
lease and loses it when the lease expires. Holders are real processes and real GCS objects.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from gcs_helpers import assert_complete, leftovers

from tfhub_cache.cache.layout import EntryNames
from tfhub_cache.cache.staging import stage
from tfhub_cache.handles import cache_key
from tfhub_cache.storage.gcs import GCSStorage

PY = sys.executable

# The GCS emulator and per-test gs:// caches.


# -- holders on this host ---------------------------------------------------------------------------------


def test_lock_of_a_reused_pid_or_an_empty_lock_is_stale_at_once(
    hub: Any, handle_of: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The PID in a dead stager's lock may belong to a newer process by now; an empty lock has no holder."""
    handle = handle_of("small_a")
    key = cache_key(handle)
    tmp_path.mkdir(exist_ok=True)
    lock = tmp_path / f"{key}.lock"
    sleeper = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{socket.gethostname()}.{sleeper.pid}.deadbeef")  # alive, but started after the lock
        an_hour_ago = time.time() - 3600
        os.utime(lock, (an_hour_ago, an_hour_ago))
        with caplog.at_level(logging.WARNING, logger="tfhub_cache"):
            assert stage(handle, str(tmp_path), lock_timeout=7200)["downloaded"]
        assert f"its process {sleeper.pid} on this host is gone" in caplog.text
    finally:
        sleeper.kill()
        sleeper.wait()
    other = tmp_path / "other"
    other.mkdir()
    empty = other / f"{key}.lock"
    empty.write_bytes(b"")
    os.utime(empty, (time.time() - 60, time.time() - 60))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tfhub_cache"):
        assert stage(handle, str(other), lock_timeout=7200)["downloaded"]
    assert "it is empty" in caplog.text
    assert not empty.exists()


# -- holders on other machines (a gs:// cache) ------------------------------------------------------------


def test_lock_of_a_remote_holder_is_taken_over_after_its_lease_expires(
    hub: Any, handle_of: Any, gcs_cache: str, caplog: pytest.LogCaptureFixture
) -> None:
    handle = handle_of("small_a")
    storage = GCSStorage(gcs_cache)
    names = EntryNames(cache_key(handle))
    foreign = f"tpu-worker-7.example.internal.4242.{uuid.uuid4().hex}".encode()
    assert storage.create_exclusive(names.lock, foreign) is not None  # a holder on another machine that died
    caplog.set_level(logging.WARNING, logger="tfhub_cache.cache.locks")
    result = stage(handle, gcs_cache, lock_timeout=2)
    assert result["downloaded"] is True
    assert "Took over stale lock" in caplog.text and "tpu-worker-7.example.internal" in caplog.text
    assert leftovers(storage) == []
    assert_complete(storage, handle)


def test_lock_of_a_live_remote_holder_is_respected(
    hub: Any, handle_of: Any, gcs_cache: str, caplog: pytest.LogCaptureFixture
) -> None:
    handle = handle_of("small_b")
    storage = GCSStorage(gcs_cache)
    names = EntryNames(cache_key(handle))
    foreign = f"tpu-worker-8.example.internal.4343.{uuid.uuid4().hex}".encode()
    token = storage.create_exclusive(names.lock, foreign)
    assert token is not None
    released_at: list[float] = []
    errors: list[str] = []

    def holder() -> None:
        """Renews its lease for longer than the waiter's lock_timeout, then releases without publishing."""
        current: str | None = token
        until = time.monotonic() + 5.0
        while time.monotonic() < until:
            time.sleep(0.3)
            current = storage.refresh_lease(names.lock, current or "", foreign)
            if current is None:
                errors.append("lease lost")
                return
        released_at.append(time.time())
        storage.delete(names.lock, token=current)

    thread = threading.Thread(target=holder)
    thread.start()
    caplog.set_level(logging.WARNING, logger="tfhub_cache.cache.locks")
    result = stage(handle, gcs_cache, lock_timeout=2)
    thread.join()
    assert errors == [] and "Took over" not in caplog.text
    assert result["downloaded"] is True
    downloads = [r["time"] for r in hub.records("/storage/google/small_b/1.tar.gz")]
    assert len(downloads) == 1 and downloads[0] >= released_at[0]  # it waited for the release
