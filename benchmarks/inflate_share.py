"""How much of a whole ``tfhub-cache stage`` process is inflating one gzip stream? (issue 12)

``python benchmarks/inflate_share.py [--rounds N] [--bandwidth MB_PER_S] [--latency S]`` (after ``make
bench`` has built ``benchmarks/.work``).

Runs ``tfhub-cache stage`` of the 512 MiB benchmark model from the benchmark hub (per-connection cap
and latency as given; default 40 MB/s + 20 ms, the issue's modelled WAN), each run a fresh process,
with one thing added: the extractor's decompress call is timed. It prints, per run, the process's
wall time, when the first and last decompress calls happened, and their sum. When the sum is most
of the span between them, the stage is bound by inflate on one core, and no download tuning can make
the whole process faster than start-up + that sum.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

MB = 1_000_000

# Runs inside the measured process: time every decompress call, then run the CLI as its script would.
_CHILD = """
import atexit, json, sys, time
started = time.perf_counter()
import tfhub_cache.archive.extract as extract
inner, calls = extract._decompress, {"seconds": 0.0, "n": 0, "first": None, "last": None}
def timed(d, data, source):
    t = time.perf_counter()
    if calls["first"] is None:
        calls["first"] = t - started
    try:
        return inner(d, data, source)
    finally:
        calls["seconds"] += time.perf_counter() - t
        calls["n"] += 1
        calls["last"] = time.perf_counter() - started
extract._decompress = timed
atexit.register(lambda: print("RESULT " + json.dumps(calls), file=sys.stderr))
from tfhub_cache.cli import main
sys.argv = ["tfhub-cache", "stage", sys.argv[1], "--cache-dir", sys.argv[2], "--json"]
sys.exit(main())
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bandwidth", type=float, default=40.0, help="MB/s per connection (0: uncapped)")
    p.add_argument("--latency", type=float, default=0.020, help="seconds before each response")
    p.add_argument("--model", default="big512")
    p.add_argument("--cache-root", default=str(HERE / ".work" / "caches"))
    args = p.parse_args()
    root = HERE / ".work" / "hubroot"
    if not (root / "bench" / args.model).is_dir():
        print(f"{root} has no {args.model}: run `make bench BENCH_ARGS=--quick` (or `make bench`) once first.")
        return 2

    from tfhub_cache.testing.hub import HubServerProcess

    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| run | whole process | first decompress at | last ends at | decompress calls (sum) | share of the span |")
    print("|---|---|---|---|---|---|")
    with HubServerProcess(root) as hub:
        hub.control.set_network(bandwidth_bytes_per_s=args.bandwidth * MB or None, latency_s=args.latency)
        url = f"{hub.url}/bench/{args.model}/1"
        for i in range(args.rounds):
            cache = Path(args.cache_root) / f"inflate-share-r{i}"
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir(parents=True)
            subprocess.run(["sync"], check=False)
            started = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, url, str(cache)], capture_output=True, text=True, check=True
            )
            wall = time.perf_counter() - started
            shutil.rmtree(cache, ignore_errors=True)
            line = [x for x in proc.stderr.splitlines() if x.startswith("RESULT ")][-1]
            calls = json.loads(line[len("RESULT ") :])
            span = calls["last"] - calls["first"]
            print(
                f"| {i + 1} | {wall:.2f} s | {calls['first']:.2f} s | {calls['last']:.2f} s | "
                f"{calls['seconds']:.2f} s ({calls['n']}) | {calls['seconds'] / span:.0%} |"
            )
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
