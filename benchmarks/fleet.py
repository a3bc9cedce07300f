"""A fleet of hosts getting one model: tiered caches (1 hub download, then pulls) vs one hub.resolve per host.

::

    python benchmarks/fleet.py            # 8 hosts, the ~512 MiB model, 40 MB/s per connection + 20 ms
    python benchmarks/fleet.py --quick    # 64 MiB model: a smoke run
    python benchmarks/fleet.py --readme   # also rewrite the fleet block of benchmarks/README.md

Every host is its own process with its own cache dir (``benchmarks/child.py``), all started at once:

* **tiered** (ours): ``stage_tiered(url, <host cache>, upstream_cache=gs://bench/fleet)`` with the
  upstream in fake-gcs-server: the first host to take the upstream entry's lock downloads from the hub
  into the ``gs://`` cache, the others wait for it, then every host pulls the revision;
* **hub.resolve** (tensorflow_hub): ``hub.resolve(url)`` with ``TFHUB_CACHE_DIR=<host cache>``.

The hub runs the WAN model of ``benchmarks/run.py`` (each connection capped, a delay before each
response). Reported: hub archive downloads (the hub's own counter), time until every host has the
model (the slowest host's whole process, imports included: what the fleet waits for), one pull vs one
``hub.resolve`` alone, and a pull of the revision from the emulator vs a cold stage from the plain
loopback hub (a pull neither requests the hub nor inflates).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import MB, Run, build_models, fresh, log, machine, run_child, versions  # noqa: E402

from tfhub_cache.testing.gcs_emulator import GCSEmulator  # noqa: E402
from tfhub_cache.testing.hub_server import HubControl, HubServerProcess  # noqa: E402

README = HERE / "README.md"
BEGIN, END = "<!-- fleet:begin -->", "<!-- fleet:end -->"


def archive_downloads(control: HubControl, name: str) -> int:
    """Archive bodies the hub started to send for ``name`` (200s; ranged parts of one download not counted)."""
    models = control.stats()["models"]
    return sum(int(v.get("archive_full", 0)) for k, v in models.items() if name in k)


def fleet(hosts: int, launch: Any) -> list[Run]:
    """Start ``hosts`` contenders at once (one thread waits on each process); their runs, in host order."""
    with ThreadPoolExecutor(hosts) as pool:
        return list(pool.map(launch, range(hosts)))


def slowest(runs: list[Run]) -> float:
    return max(r.wall for r in runs)


def pair(ours: float, theirs: float, fmt: str, our_note: str = "", their_note: str = "") -> str:
    """Two table cells, the smaller (better) value in bold: no side is bold by default."""
    cells = [fmt.format(ours) + our_note, fmt.format(theirs) + their_note]
    if ours != theirs:
        best = 0 if ours < theirs else 1
        value = fmt.format((ours, theirs)[best])
        cells[best] = cells[best].replace(value, f"**{value}**", 1)
    return " | ".join(cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=8)
    p.add_argument("--size-mb", type=int, default=512)
    p.add_argument("--bandwidth-mb", type=float, default=40.0, help="MB/s per connection (WAN model)")
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--quick", action="store_true", help="64 MiB model")
    p.add_argument("--readme", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.size_mb = 64
    started, load_start = time.time(), " ".join(f"{x:.1f}" for x in os.getloadavg())
    work = HERE / ".work"
    caches = work / "fleet-caches"
    shutil.rmtree(caches, ignore_errors=True)
    data = build_models(work, args.size_mb, 16, 0, 0)
    name = f"big{args.size_mb}"
    results: dict[str, Any] = {}
    with HubServerProcess(data["root"]) as hub, GCSEmulator(work / "fleet-gcs") as emulator:
        emulator.create_bucket("bench")
        gcs_env = emulator.env()
        url = f"{hub.url}/bench/{name}/1"
        control = HubControl(hub.url)

        def tiered(i: int, upstream: str = "gs://bench/fleet") -> Run:
            cache = str(fresh(caches / f"tiered-host{i}"))
            return run_child(
                "ours_tiered", {"url": url, "cache": cache, "upstream": upstream}, env=gcs_env, timeout=900
            )

        def resolve(i: int) -> Run:
            return run_child(
                "hub_cold", {"url": url}, env={"TFHUB_CACHE_DIR": str(fresh(caches / f"hub-host{i}"))}, timeout=900
            )

        control.set_network(bandwidth_bytes_per_s=args.bandwidth_mb * MB, latency_s=args.latency_ms / 1000)
        control.reset_stats()
        results["tiered"] = fleet(args.hosts, tiered)
        results["tiered_downloads"] = archive_downloads(control, name)
        log(f"tiered fleet: {[f'{r.wall:.1f}' for r in results['tiered']]} s, {results['tiered_downloads']} downloads")
        control.reset_stats()
        results["hub"] = fleet(args.hosts, resolve)
        results["hub_downloads"] = archive_downloads(control, name)
        log(f"hub.resolve fleet: {[f'{r.wall:.1f}' for r in results['hub']]} s, {results['hub_downloads']} downloads")
        results["one_pull"] = run_child(
            "ours_pull",
            {"url": url, "upstream": "gs://bench/fleet", "cache": str(fresh(caches / "one-pull"))},
            env=gcs_env,
        )
        results["one_resolve"] = resolve(args.hosts)
        log(f"one pull {results['one_pull'].seconds:.2f} s, one hub.resolve {results['one_resolve'].seconds:.2f} s")
        control.set_network()  # plain loopback: the cold stage at its fastest
        results["cold_stage"] = run_child("ours_cold", {"url": url, "cache": str(fresh(caches / "cold-stage"))})
        results["pull"] = run_child(
            "ours_pull", {"url": url, "upstream": "gs://bench/fleet", "cache": str(fresh(caches / "pull"))}, env=gcs_env
        )
        log(f"loopback: cold stage {results['cold_stage'].seconds:.2f} s, pull {results['pull'].seconds:.2f} s")
    shutil.rmtree(caches, ignore_errors=True)
    shutil.rmtree(work / "fleet-gcs", ignore_errors=True)
    failed = [r.error for key in ("tiered", "hub") for r in results[key] if not r.ok]
    failed += [results[k].error for k in ("one_pull", "one_resolve", "cold_stage", "pull") if not results[k].ok]
    table = report(args, results, started, load_start)
    print(table)
    if args.readme:
        write_readme(table)
    if failed:
        print(f"FAILED runs: {failed}", file=sys.stderr)
        return 1
    return 0


def report(args: argparse.Namespace, r: dict[str, Any], started: float, load_start: str) -> str:
    tiered, hub = r["tiered"], r["hub"]
    revisions = {run.result.get("revision") for run in tiered}
    load_end = " ".join(f"{x:.1f}" for x in os.getloadavg())
    wan = f"{args.bandwidth_mb:g} MB/s per connection, {args.latency_ms:g} ms before each response"
    rows = [
        "| | tiered (ours): 1 hub download into gs://, then pulls | one `hub.resolve` per host |",
        "| --- | --- | --- |",
        f"| hub archive downloads | {pair(r['tiered_downloads'], r['hub_downloads'], '{}')} |",
        f"| time until every host has the model (slowest whole process) "
        f"| {pair(slowest(tiered), slowest(hub), '{:.1f} s')} |",
        f"| fastest host (whole process) | {min(x.wall for x in tiered):.1f} s | {min(x.wall for x in hub):.1f} s |",
        f"| CPU of the whole fleet (user+sys) | {sum(x.cpu for x in tiered):.1f} s | {sum(x.cpu for x in hub):.1f} s |",
        f"| hosts on the same revision | {len(tiered)} on {len(revisions)} revision(s) | n/a (no revisions) |",
        "",
        "| one host alone (in-process, imports excluded) | ours | tensorflow_hub |",
        "| --- | --- | --- |",
        f"| one pull from gs:// vs one `hub.resolve` over the WAN model "
        f"| {pair(r['one_pull'].seconds, r['one_resolve'].seconds, '{:.2f} s')} |",
        f"| pull from the emulator vs a cold stage from the loopback hub (no WAN) "
        f"| {pair(r['pull'].seconds, r['cold_stage'].seconds, '{:.2f} s', ' (pull)', ' (our cold stage)')} |",
        f"| peak RSS: pull vs cold stage | {r['pull'].rss_mb:.0f} MB | {r['cold_stage'].rss_mb:.0f} MB |",
    ]
    return "\n".join(
        [
            f"Command: `python benchmarks/fleet.py {' '.join(sys.argv[1:])}`, "
            f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, total {time.time() - started:.0f} s.  ",
            f"Machine: {machine()}; load average at start {load_start}, at end {load_end}.  ",
            f"Versions: {versions()}.  ",
            f"Fleet: {args.hosts} hosts (processes), {args.hosts} local caches, the {args.size_mb} MiB model; "
            f"hub WAN model: {wan}; the upstream is fake-gcs-server on loopback.",
            "",
            *rows,
        ]
    )


def write_readme(table: str) -> None:
    text = README.read_text()
    block = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        text = (
            text.rstrip("\n") + "\n\n### A fleet of 8 hosts: tiered caches vs hub.resolve per host\n\n" + block + "\n"
        )
    README.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
