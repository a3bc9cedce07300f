"""Staging survives workers killed with SIGKILL at random points: never a partial model, cleaned up at once.

Every fault is real: stagers are separate processes killed with SIGKILL while the loopback hub
throttles the download. No mocks, and no timed assertions (how fast staging is belongs to
benchmarks/): "within seconds" is enforced by giving the lock a grace period far longer than the
test's own timeout, so only the dead-PID rule can let it pass. The faults of one part each are
tested with that part: the network in ``test_transfer``, disks and hostile archives in
``test_extract``, locks in ``test_locks``, the token in ``test_token_scope``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from stage_helpers import MEDIUM, assert_entry_complete, entry_files, manifest_of_dir

from tfhub_cache.cache.staging import stage
from tfhub_cache.handles import cache_key

PY = sys.executable

# -- SIGKILL at random points --------------------------------------------------------------------------------

_KILLED_STAGER = textwrap.dedent(
    """
    import sys
    from tfhub_cache.cache.staging import stage
    print("GO", flush=True)
    stage(sys.argv[1], sys.argv[2], lock_timeout=3600)
    print("DONE", flush=True)
    """
)


def _dir_is_complete_model(model_dir: Path, reference: dict[str, Any]) -> bool:
    return manifest_of_dir(model_dir) == reference


def test_sigkilled_stagers_never_leave_a_partial_model_and_are_cleaned_up_at_once(
    hub: Any,
    handle_of: Any,
    tmp_path: Path,
    model_archives: dict[str, Path],
    medium_reference: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    size = model_archives["medium"].stat().st_size
    hub.set_faults(MEDIUM, rate_bytes_per_s=size * 3)  # ~0.3 s per download: kills land all along it
    handle = handle_of("medium")
    key = cache_key(handle)
    rng = random.Random(6)
    states: list[tuple[bool, bool, bool]] = []
    for trial in range(20):
        cache = tmp_path / f"trial{trial}"
        proc = subprocess.Popen([PY, "-c", _KILLED_STAGER, handle, str(cache)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "GO"
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        names = entry_files(cache)
        had = (any(n.endswith(".tmp") for n in names), f"{key}.lock" in names, key in names)
        states.append(had)
        if key in names:  # never a model dir without complete content (metadata may trail the rename)
            assert _dir_is_complete_model(cache / key, medium_reference), (trial, names)
            if f"{key}.meta.json" in names:
                assert json.loads((cache / f"{key}.meta.json").read_text())["manifest"] == medium_reference
        # The lock's grace period is an hour: only "same host, dead PID" can let the next stager in.
        with caplog.at_level(logging.INFO, logger="tfhub_cache"):
            result = stage(handle, str(cache), lock_timeout=3600)
        assert result["path"] == os.path.realpath(cache / key)  # the view names the current revision
        assert_entry_complete(cache, handle, medium_reference)
        revisions = sorted(p.name for p in (cache / f"{key}.revisions").iterdir())
        assert revisions == [result["revision"], f"{result['revision']}.json"], (trial, revisions)
        leftovers = [n for n in entry_files(cache) if n.endswith((".tmp", ".lock"))]
        assert leftovers == [], (trial, leftovers)
        if had[1]:
            assert f"its process {proc.pid} on this host is gone" in caplog.text
        caplog.clear()
        shutil.rmtree(cache)
    killed_mid_download = sum(1 for tmp, lock, _ in states if tmp or lock)
    assert killed_mid_download >= 5, states  # the kills did land while stagers held the lock
