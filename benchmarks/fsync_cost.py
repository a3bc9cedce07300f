"""What ``fsync`` before publishing costs on a cold stage of a ~512 MB model (``TFHUB_FSYNC``).

Serves one model from the loopback hub (a subprocess, as in ``run.py``) and stages it cold into a
fresh local cache, alternating ``TFHUB_FSYNC=0`` and ``TFHUB_FSYNC=1`` round after round, each stage
in its own fresh process (``sync`` before each, so no run inherits another's dirty pages). Prints
the medians and the relative cost. The model is ``make_synthetic_archive``'s (a placeholder
``saved_model.pb`` plus incompressible "variables", like random float32 weights), so it builds in
seconds without TensorFlow.

    .venv/bin/python benchmarks/fsync_cost.py [--size-mb 512] [--rounds 3] [--small-files 40]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from gcs_helpers import make_synthetic_archive  # noqa: E402

from tfhub_cache.testing.hub import HubServerProcess  # noqa: E402

CHILD = r"""
import json, sys, time
from tfhub_cache.cache.staging import stage
started = time.monotonic()
result = stage(sys.argv[1], sys.argv[2])
print(json.dumps({"seconds": time.monotonic() - started, "bytes": result["bytes"], "files": result["files"]}))
"""


def stage_once(url: str, cache: Path, fsync: bool) -> dict[str, float]:
    shutil.rmtree(cache, ignore_errors=True)
    subprocess.run(["sync"], check=True)
    env = {**os.environ, "TFHUB_FSYNC": "1" if fsync else "0", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", CHILD, url, str(cache)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    shutil.rmtree(cache, ignore_errors=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=int, default=512)
    p.add_argument("--small-files", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", default=str(HERE / ".work"))
    args = p.parse_args()
    work = Path(args.work)
    archive = make_synthetic_archive(
        work / f"fsync-{args.size_mb}.tar.gz", big_bytes=args.size_mb << 20, small_files=args.small_files
    )
    times: dict[bool, list[float]] = {False: [], True: []}
    load = os.getloadavg()
    with HubServerProcess() as hub:
        url = hub.control.add_model("/bench/fsync/1", archive)
        handle = url.split("?")[0]
        for i in range(args.rounds):
            for fsync in (False, True) if i % 2 == 0 else (True, False):
                result = stage_once(handle, work / "fsync-cache", fsync)
                times[fsync].append(result["seconds"])
                print(f"round {i + 1} TFHUB_FSYNC={int(fsync)}: {result['seconds']:.2f} s", flush=True)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"\n{args.size_mb} MiB model ({archive.stat().st_size / 1e6:.0f} MB archive), "
        f"{args.rounds} alternating rounds, "
        f"cache on {work}, load average {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end, "
        f"{time.strftime('%Y-%m-%d %H:%M')}:\n"
        f"  TFHUB_FSYNC=0: median {off:.2f} s  {sorted(round(t, 2) for t in times[False])}\n"
        f"  TFHUB_FSYNC=1: median {on:.2f} s  {sorted(round(t, 2) for t in times[True])}\n"
        f"  cost of fsync: {100 * (on - off) / off:+.1f}%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
