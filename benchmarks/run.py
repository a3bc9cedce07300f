"""``make bench``: our staging against ``tensorflow_hub.resolve``, measured in one run, contenders alternating.

What it does (details and the last results in ``benchmarks/README.md``):

1. builds its models once into ``benchmarks/.work/`` (a ~512 MB SavedModel of random float32
   weights, a 64 MB one, and small ones), and serves them from the loopback hub
   (``testing/hub_server.py``) running as a subprocess, so it never shares a GIL with a contender;
2. runs every contender in its own fresh process (``benchmarks/child.py``), alternating ours and
   theirs round after round, with a fresh cache each time, and records the in-process time of the
   call, the whole-process wall time and the process's peak RSS (``wait4``);
3. measures the machine's ceilings on the same data (loopback download, ``gzip -dc``, our
   decompressor alone) and prints a table of medians and ratios (``--readme`` also writes it into
   ``benchmarks/README.md``).

Nothing here is a test: numbers depend on the machine and its load, which the table reports.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tfhub_cache.testing.hub import HubControl, HubServerProcess  # noqa: E402

MB = 1_000_000
MiB = 1 << 20
README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"


# -- running one contender -----------------------------------------------------------------------------


@dataclass
class Run:
    """One child process: what it reported, its wall time and its peak RSS."""

    action: str
    ok: bool
    wall: float
    rss_mb: float
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    cpu: float = float("nan")  # user + system seconds of the process

    @property
    def seconds(self) -> float:
        return float(self.result.get("seconds", float("nan")))


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TFHUB_", "STORAGE_EMULATOR"))}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "NO_GCE_CHECK": "true",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.update(extra or {})
    return env


def run_child(action: str, args: dict[str, Any], *, env: dict[str, str] | None = None, timeout: float = 300) -> Run:
    """Run ``child.py ACTION`` and collect its RESULT line, wall time and peak RSS (``ru_maxrss`` of wait4)."""
    return run_process(action, [sys.executable, str(HERE / "child.py"), action, json.dumps(args)], env, timeout)


def run_cli(url: str, cache: Path, *, env: dict[str, str] | None = None, timeout: float = 300) -> Run:
    """Our whole ``tfhub-cache stage`` process, as a user runs it: ``seconds`` is its wall time."""
    cli = str(Path(sys.executable).with_name("tfhub-cache"))
    run = run_process("cli", [cli, "stage", url, "--cache-dir", str(cache), "--json"], env, timeout, parse=False)
    if run.ok:
        run.result = {"seconds": run.wall}
    return run


def run_process(action: str, argv: list[str], env: dict[str, str] | None, timeout: float, *, parse: bool = True) -> Run:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=err,
            env=child_env(env),
            cwd=str(REPO),
        )
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf8", "replace")
        stderr = err.read().decode("utf8", "replace")
    rss_mb = usage.ru_maxrss * 1024 / MB  # Linux reports KiB
    cpu = usage.ru_utime + usage.ru_stime
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or (parse and not lines):
        tail = (stderr.strip().splitlines() or ["(no output)"])[-1]
        reason = "timed out" if proc.returncode == -9 else f"exit {proc.returncode}"
        return Run(action, False, wall, rss_mb, error=f"{reason}: {tail[:200]}", cpu=cpu)
    result = json.loads(lines[-1][len("RESULT ") :]) if lines else {}
    return Run(action, True, wall, rss_mb, result, cpu=cpu)


def fresh(path: Path) -> Path:
    """A cache dir that never existed; nothing is deleted between runs (see :meth:`Bench.cache`)."""
    assert not path.exists(), path
    os.sync()  # start each run without the previous run's dirty pages being written back under it
    return path


def median(values: list[float]) -> float:
    good = [v for v in values if v == v]
    return statistics.median(good) if good else float("nan")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- data -----------------------------------------------------------------------------------------------


def build_models(work: Path, size_mb: int, small_size_mb: int, small_count: int, small_params: int) -> dict[str, Any]:
    """Build (once; cached in ``work/models``) the big models and the small ones, in one TF process."""
    specs: dict[str, dict[str, Any]] = {
        f"big{size_mb}": {"size_bytes": size_mb * MiB},
        f"big{small_size_mb}": {"size_bytes": small_size_mb * MiB},
    }
    for i in range(small_count):
        specs[f"small{i:02d}"] = {"scale": 1.0 + i, "offset": float(i), "num_params": small_params, "seed": i}
    code = (
        "import json, sys\n"
        "from tfhub_cache.testing.models import cached_model_archive\n"
        "specs = json.loads(sys.argv[2])\n"
        "print(json.dumps({n: str(cached_model_archive(sys.argv[1], n, **kw)) for n, kw in specs.items()}))\n"
    )
    log(f"building models into {work / 'models'} (cached after the first run)")
    done = subprocess.run(
        [sys.executable, "-c", code, str(work / "models"), json.dumps(specs)],
        check=True,
        capture_output=True,
        text=True,
        env=child_env(),
    )
    archives = {name: Path(path) for name, path in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    root = work / "hubroot"
    shutil.rmtree(root, ignore_errors=True)
    for name, archive in archives.items():
        link = root / "bench" / name / "1.tar.gz"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(archive)
    return {"root": root, "archives": archives}


# -- the benchmark --------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    hub_url: str = ""
    storage_url: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    last_cache: dict[str, Path] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"{self.hub_url}/bench/{name}/1"

    def cache(self, name: str, root: str | None = None) -> Path:
        """A new cache dir per run, all removed at the very end: deleting 500 MB between runs would make
        the filesystem free (and, mounted with ``discard``, trim) blocks under the next contender."""
        return Path(root or self.args.cache_root) / "caches" / name

    # ceilings ----------------------------------------------------------------------------------------
    def ceilings(self, big: str) -> None:
        archive = self.data["archives"][big]
        size = archive.stat().st_size
        storage = f"{self.storage_url}/storage/bench/{big}/1.tar.gz"
        downloads = [run_child("download", {"url": storage}) for _ in range(self.args.rounds)]
        gz = []
        for _ in range(self.args.rounds):
            started = time.perf_counter()
            with open(archive, "rb") as src:
                subprocess.run(["gzip", "-dc"], stdin=src, stdout=subprocess.DEVNULL, check=True)
            gz.append(time.perf_counter() - started)
        ours = [run_child("decompress", {"archive": str(archive)}) for _ in range(self.args.rounds)]
        stdlib = [
            run_child("decompress", {"archive": str(archive), "decoder": "zlib"}) for _ in range(self.args.rounds)
        ]
        out = ours[0].result.get("bytes", 0)
        self.results["ceilings"] = {
            "archive_bytes": size,
            "extracted_bytes": out,
            "download_s": median([r.seconds for r in downloads]),
            "gzip_s": median(gz),
            "decoder": ours[0].result.get("decoder"),
            "decoder_s": median([r.seconds for r in ours]),
            "stdlib_s": median([r.seconds for r in stdlib]),
        }
        log(f"ceilings: {self.results['ceilings']}")

    # cold ---------------------------------------------------------------------------------------------
    def cold(self, name: str, rounds: int, root: str | None = None) -> dict[str, list[Run]]:
        runs: dict[str, list[Run]] = {"ours": [], "hub": []}
        url = self.url(name)
        for i in range(rounds):
            order = ("ours", "hub") if i % 2 == 0 else ("hub", "ours")
            for who in order:
                cache = fresh(self.cache(f"{who}-{name}-r{i}", root))
                if root is None:
                    self.last_cache[who] = cache
                if who == "ours":
                    run = run_child("ours_cold", {"url": url, "cache": str(cache)})
                else:
                    run = run_child("hub_cold", {"url": url}, env={"TFHUB_CACHE_DIR": str(cache)})
                runs[who].append(run)
                log(
                    f"cold {name} {who}{' on ' + root if root else ''}: {run.seconds:.2f}s in-process, "
                    f"{run.wall:.2f}s process, "
                    f"{run.rss_mb:.0f} MB {run.error}"
                )
        return runs

    # networks: our whole CLI process vs hub.resolve in-process ------------------------------------------
    def network(self, name: str, label: str, bandwidth: float | None, latency: float, rounds: int) -> dict[str, Any]:
        """Alternating rounds on the hub's WAN model (``bandwidth`` bytes/s per connection, ``latency`` s
        before each response; None/0: plain loopback)."""
        control = HubControl(self.hub_url)
        control.set_network(bandwidth_bytes_per_s=bandwidth, latency_s=latency)
        runs: dict[str, list[Run]] = {"ours": [], "hub": []}
        url = self.url(name)
        ours_env = {"TFHUB_DOWNLOAD_CONNECTIONS": str(self.args.connections)} if self.args.connections else None
        try:
            for i in range(rounds):
                order = ("ours", "hub") if i % 2 == 0 else ("hub", "ours")
                for who in order:
                    cache = fresh(self.cache(f"net-{label}-{who}-{name}-r{i}".replace(" ", "").replace("/", "")))
                    if who == "ours":
                        run = run_cli(url, cache, env=ours_env)
                    else:
                        run = run_child("hub_cold", {"url": url}, env={"TFHUB_CACHE_DIR": str(cache)}, timeout=600)
                    runs[who].append(run)
                    log(
                        f"{label} {name} {who}: {run.seconds:.2f}s "
                        f"({'whole process' if who == 'ours' else 'in-process'}), "
                        f"process {run.wall:.2f}s, CPU {run.cpu:.2f}s, {run.rss_mb:.0f} MB {run.error}"
                    )
        finally:
            control.set_network()
        return {"label": label, "bandwidth": bandwidth, "latency": latency, "rounds": rounds, "runs": runs}

    # warm ---------------------------------------------------------------------------------------------
    def warm(self, name: str) -> dict[str, Any]:
        """Warm hits on the caches the last cold round left: in-process median, then whole processes."""
        hub_control = HubControl(self.hub_url)
        url = self.url(name)
        out: dict[str, Any] = {}
        for who in ("ours", "hub"):
            cache = self.last_cache[who]
            hub_control.reset_stats()
            if who == "ours":
                inproc = run_child("ours_warm", {"url": url, "cache": str(cache), "calls": self.args.calls})
            else:
                inproc = run_child(
                    "hub_warm", {"url": url, "calls": self.args.calls}, env={"TFHUB_CACHE_DIR": str(cache)}
                )
            requests = hub_control.stats()["requests"]
            procs = []
            for _ in range(self.args.rounds):
                if who == "ours":
                    procs.append(run_child("ours_warm", {"url": url, "cache": str(cache), "calls": 1}))
                else:
                    procs.append(run_child("hub_warm", {"url": url, "calls": 1}, env={"TFHUB_CACHE_DIR": str(cache)}))
            out[who] = {"inproc": inproc, "procs": procs, "requests": requests}
            log(
                f"warm {who}: median {inproc.result.get('median', float('nan')) * 1e3:.3f} ms in-process "
                f"({requests} requests), process {median([p.wall for p in procs]):.2f}s {inproc.error}"
            )
        return out

    # many small ---------------------------------------------------------------------------------------
    def many(self) -> dict[str, list[Run]]:
        urls = [self.url(f"small{i:02d}") for i in range(self.args.small_count)]
        runs: dict[str, list[Run]] = {"ours": [], "hub": []}
        for i in range(self.args.many_rounds):
            order = ("ours", "hub") if i % 2 == 0 else ("hub", "ours")
            for who in order:
                cache = fresh(self.cache(f"many-{who}-r{i}"))
                if who == "ours":
                    run = run_child("ours_many", {"urls": urls, "cache": str(cache), "workers": self.args.workers})
                else:
                    run = run_child("hub_many", {"urls": urls}, env={"TFHUB_CACHE_DIR": str(cache)})
                runs[who].append(run)
                log(f"{len(urls)} small {who}: {run.seconds:.2f}s {run.error}")
        return runs

    # gs:// --------------------------------------------------------------------------------------------
    def gcs(self, name: str) -> dict[str, Any]:
        from tfhub_cache.testing.gcs_emulator import GCSEmulator

        out: dict[str, Any] = {}
        url = self.url(name)
        tree = self.data["archives"][name].parent / "saved_model"
        with GCSEmulator(self.work / "gcs-data") as emulator:
            emulator.create_bucket("bench")
            env = emulator.env()
            ours, serial = [], []
            for i in range(self.args.gcs_rounds):
                ours.append(run_child("ours_gcs", {"url": url, "cache": f"gs://bench/ours{i}"}, env=env))
                log(f"gs:// ours: {ours[-1].seconds:.2f}s {ours[-1].rss_mb:.0f} MB {ours[-1].error}")
                serial.append(
                    run_child(
                        "serial_upload",
                        {"endpoint": emulator.endpoint, "bucket": "bench", "prefix": f"serial{i}", "tree": str(tree)},
                        env=env,
                    )
                )
                log(f"gs:// serial upload: {serial[-1].seconds:.2f}s {serial[-1].error}")
            out["ours"], out["serial"] = ours, serial
            out["hub"] = self._hub_gcs(emulator, url) if not self.args.skip_hub_gcs else None
        shutil.rmtree(self.work / "gcs-data", ignore_errors=True)
        return out

    def _hub_gcs(self, emulator: Any, url: str) -> Run | str:
        """tensorflow_hub with TFHUB_CACHE_DIR=gs://, through the TLS CONNECT relay of tests/tls_relay.py."""
        try:
            sys.path.insert(0, str(REPO / "tests"))
            from tls_relay import TLSRelay, make_test_ca
        except ImportError as exc:
            return f"n/a: tests/tls_relay.py unavailable ({exc})"
        with tempfile.TemporaryDirectory() as tmp:
            ca = make_test_ca(Path(tmp))
            with TLSRelay(emulator.port, ca) as relay:
                env = {**relay.env(ca), "TFHUB_CACHE_DIR": "gs://bench/hub"}
                run = run_child(
                    "hub_cold", {"url": url, "lower_bound": True}, env=env, timeout=self.args.hub_gcs_timeout
                )
                log(f"gs:// tensorflow_hub via relay: {run.seconds:.2f}s {run.error}")
                return run

    # imports ------------------------------------------------------------------------------------------
    def imports(self) -> list[Run]:
        env = {"AIRFLOW_HOME": str(self.work / "airflow_home"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
        runs = [run_child("imports", {}, env=env) for _ in range(self.args.import_rounds)]
        log(f"imports: {[round(r.seconds * 1e3) for r in runs]} ms {runs[0].error}")
        return runs


# -- report ---------------------------------------------------------------------------------------------


def fmt_s(value: float) -> str:
    if value != value:
        return "n/a"
    return f"{value * 1e3:.2f} ms" if value < 0.1 else f"{value:.2f} s"


def ratio(theirs: float, ours: float) -> float:
    return theirs / ours if ours and ours == ours and theirs == theirs else float("nan")


def verdict(ok: bool, text: str) -> str:
    return ("**met** " if ok else "**not met** ") + text


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("tensorflow-cpu", "tensorflow-hub", "isal", "zlib-ng", "requests", "google-cloud-storage"):
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{dist} {version(dist)}")
    return ", ".join(parts)


NETWORK_TARGETS = {"40 MB/s": 5.0, "loopback": 3.0}


def network_report(bench: Bench, big: str) -> list[str]:
    """The issue-12 table: our whole ``tfhub-cache stage`` process vs ``hub.resolve`` in-process."""
    lines = [
        f"Networks (the hub's WAN model; {big}; ours = the whole `tfhub-cache stage` process, "
        f"{bench.args.connections or 'default'} connections; tensorflow_hub = `hub.resolve` in-process; "
        "medians of alternating rounds; CPU = user+system seconds of our process):",
        "",
        "| network | ours: whole process | ours: CPU, peak RSS | hub.resolve in-process | its peak RSS "
        "| ours vs hub | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for net in bench.results.get("networks", []):
        runs = net["runs"]
        o = median([x.seconds for x in runs["ours"]])
        h = median([x.seconds for x in runs["hub"]])
        o_cpu = median([x.cpu for x in runs["ours"]])
        o_rss = max((x.rss_mb for x in runs["ours"]), default=float("nan"))
        h_rss = max((x.rss_mb for x in runs["hub"]), default=float("nan"))
        k = ratio(h, o)
        aim = NETWORK_TARGETS.get(net["label"])
        if net["label"] == "loopback":
            target = verdict(k >= 1.0, f"no regression; aim >= 3x: {k:.2f}x") + ("" if k >= 3 else " (aim not reached)")
        elif aim:
            target = verdict(k >= aim and o_rss <= 150, f">= {aim:g}x, RSS <= 150 MB: {k:.2f}x, {o_rss:.0f} MB")
        else:
            target = verdict(o_rss <= 150, f"RSS <= 150 MB: {o_rss:.0f} MB")
        where = (
            "loopback, uncapped"
            if not net["bandwidth"]
            else (f"{net['bandwidth'] / MB:g} MB/s per connection, {net['latency'] * 1e3:g} ms before each response")
        )
        add_rounds = f" ({net['rounds']} round{'s' if net['rounds'] != 1 else ''})"
        lines.append(
            f"| {where}{add_rounds} | {fmt_s(o)} | {o_cpu:.2f} s, {o_rss:.0f} MB | {fmt_s(h)} | {h_rss:.0f} MB | "
            f"**{k:.2f}x** | {target} |"
        )
    failures = [
        f"{x.action}: {x.error}"
        for n in bench.results.get("networks", [])
        for g in n["runs"].values()
        for x in g
        if not x.ok
    ]
    if failures:
        lines += ["", "Failed runs: " + "; ".join(failures)]
    return lines


def report(bench: Bench, big: str, small_big: str, started: float, load: tuple[str, str]) -> str:
    r = bench.results
    a = bench.args
    lines: list[str] = []
    add = lines.append
    add(
        f"Command: `make bench` (`python benchmarks/run.py {' '.join(sys.argv[1:])}`), "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, total {time.time() - started:.0f} s.  "
    )
    add(f"Machine: {machine()}; load average at start {load[0]}, at end {load[1]}.  ")
    add(f"Versions: {versions()}.  ")
    c = r["ceilings"]
    add(
        f"Data: `{big}` = {c['extracted_bytes'] / MB:.0f} MB SavedModel (random float32), archive "
        f"{c['archive_bytes'] / MB:.0f} MB; {a.small_count} small models; cache on `{a.cache_root}`; "
        f"medians of {a.rounds} alternating rounds unless noted."
    )
    add("")
    lines.extend(network_report(bench, big))
    add("")
    add("Loopback details (ours = `core.staging.stage` in a child process):")
    add("")
    add("| measurement | ours | tensorflow_hub | ours vs hub | target |")
    add("|---|---|---|---|---|")

    cold = r["cold"]
    o_in = median([x.seconds for x in cold["ours"]])
    h_in = median([x.seconds for x in cold["hub"]])
    o_wall = median([x.wall for x in cold["ours"]])
    h_wall = median([x.wall for x in cold["hub"]])
    o_rss = max((x.rss_mb for x in cold["ours"]), default=float("nan"))
    h_rss = max((x.rss_mb for x in cold["hub"]), default=float("nan"))
    k = ratio(h_in, o_in)
    add(
        f"| cold stage {big}, in-process | {fmt_s(o_in)} ({c['extracted_bytes'] / o_in / MB:.0f} MB/s) | "
        f"{fmt_s(h_in)} | **{k:.2f}x** faster | {verdict(k >= 2, f'>= 2x (aim 3x): {k:.2f}x')} |"
    )
    tmpfs = r.get("cold_tmpfs")
    if tmpfs:
        o_t = median([x.seconds for x in tmpfs["ours"]])
        h_t = median([x.seconds for x in tmpfs["hub"]])
        add(
            f"| cold stage {big}, in-process, cache on tmpfs ({a.tmpfs_rounds} rounds) | {fmt_s(o_t)} | {fmt_s(h_t)} "
            f"| {ratio(h_t, o_t):.2f}x | the pipeline without this VM's disk and page-cache noise |"
        )
    add(f"| cold stage {big}, whole process | {fmt_s(o_wall)} | {fmt_s(h_wall)} | {ratio(h_wall, o_wall):.2f}x | |")
    rss_small = r.get("cold_small")
    o_rss_s = max((x.rss_mb for x in rss_small["ours"]), default=float("nan")) if rss_small else float("nan")
    h_rss_s = max((x.rss_mb for x in rss_small["hub"]), default=float("nan")) if rss_small else float("nan")
    peak = max(o_rss, o_rss_s) if o_rss_s == o_rss_s else o_rss
    add(
        f"| peak RSS of the staging process, {big} | {o_rss:.0f} MB | {h_rss:.0f} MB | "
        f"{ratio(h_rss, o_rss):.1f}x less | {verdict(peak <= 150, f'<= 150 MB: {peak:.0f} MB')} |"
    )
    if rss_small:
        o_s = median([x.seconds for x in rss_small["ours"]])
        h_s = median([x.seconds for x in rss_small["hub"]])
        add(
            f"| peak RSS / cold in-process, {small_big} | {o_rss_s:.0f} MB / {fmt_s(o_s)} | {h_rss_s:.0f} MB / "
            f"{fmt_s(h_s)} | {ratio(h_s, o_s):.2f}x | RSS independent of size |"
        )

    warm = r["warm"]
    o_med = float(warm["ours"]["inproc"].result.get("median", float("nan")))
    h_med = float(warm["hub"]["inproc"].result.get("median", float("nan")))
    o_req = warm["ours"]["requests"]
    add(
        f"| warm hit, in-process (median of {a.calls}) | {fmt_s(o_med)}, {o_req} requests | {fmt_s(h_med)}, "
        f"{warm['hub']['requests']} requests | {ratio(h_med, o_med):.2f}x | "
        f"{verdict(o_med <= 0.002 and o_req == 0, f'<= 2 ms, 0 requests: {o_med * 1e3:.2f} ms, {o_req}')} |"
    )
    o_pw = median([p.wall for p in warm["ours"]["procs"]])
    h_pw = median([p.wall for p in warm["hub"]["procs"]])
    o_pr = max(p.rss_mb for p in warm["ours"]["procs"])
    h_pr = max(p.rss_mb for p in warm["hub"]["procs"])
    add(
        f"| warm hit, whole process (import + call) | {fmt_s(o_pw)}, {o_pr:.0f} MB | {fmt_s(h_pw)}, {h_pr:.0f} MB | "
        f"{ratio(h_pw, o_pw):.1f}x | |"
    )

    many = r["many"]
    o_m = median([x.seconds for x in many["ours"]])
    h_m = median([x.seconds for x in many["hub"]])
    add(
        f"| {a.small_count} small models, in-process (ours: {a.workers} threads; hub: a loop) | {fmt_s(o_m)} | "
        f"{fmt_s(h_m)} | {ratio(h_m, o_m):.2f}x | |"
    )

    g = r.get("gcs")
    if g:
        o_g = median([x.seconds for x in g["ours"]])
        s_g = median([x.seconds for x in g["serial"]])
        hub_g = g["hub"]
        if isinstance(hub_g, Run) and hub_g.ok and hub_g.result.get("failed"):
            failed = str(hub_g.result["failed"])
            code = failed.split("HTTP response code ", 1)[-1][:3] if "HTTP response code" in failed else failed[:40]
            hub_text = (
                f">= {fmt_s(hub_g.seconds)} (tf.io.gfile via the TLS relay, until its final rename of the tmp dir "
                f"failed on the emulator: {code})"
            )
            hub_ratio = f">= {ratio(hub_g.seconds, o_g):.2f}x"
        elif isinstance(hub_g, Run) and hub_g.ok:
            hub_text = f"{fmt_s(hub_g.seconds)} (tf.io.gfile via TLS relay)"
            hub_ratio = f"{ratio(hub_g.seconds, o_g):.2f}x"
        else:
            reason = hub_g if isinstance(hub_g, str) else (hub_g.error if hub_g else "skipped")
            hub_text, hub_ratio = f"n/a ({reason})", ""
        k = ratio(s_g, o_g)
        add(
            f"| gs:// cache, stage {big} into the GCS emulator | {fmt_s(o_g)} ({g['ours'][0].rss_mb:.0f} MB RSS) | "
            f"{hub_text} | {hub_ratio} | |"
        )
        add(
            f"| gs:// vs serial upload of the extracted tree (same client, defaults) | {fmt_s(o_g)} | serial: "
            f"{fmt_s(s_g)} (upload only) | {k:.2f}x | {verdict(k >= 3, f'>= 3x: {k:.2f}x')} |"
        )

    imp = r["imports"]
    ms = median([x.seconds for x in imp]) * 1e3
    af = median([float(x.result.get("airflow", "nan")) for x in imp]) * 1e3
    tf = any(x.result.get("tensorflow") for x in imp)
    met = verdict(ms < 100 and not tf, f"< 100 ms, no TF: {ms:.0f} ms")
    add(
        f"| `import airflow_provider_tfhub.operators.stage` after `import airflow` ({af:.0f} ms) | {ms:.0f} ms, "
        f"TensorFlow imported: {'yes' if tf else 'no'} | | | {met} |"
    )
    add("")
    add("Ceilings on the same data (one thread each, medians):")
    add("")
    add("| ceiling | time | rate |")
    add("|---|---|---|")
    add(
        f"| loopback download of the archive to /dev/null (requests, 1 MiB chunks) | {fmt_s(c['download_s'])} | "
        f"{c['archive_bytes'] / c['download_s'] / MB:.0f} MB/s in |"
    )
    add(
        f"| `gzip -dc` (single thread) | {fmt_s(c['gzip_s'])} | "
        f"{c['extracted_bytes'] / c['gzip_s'] / MB:.0f} MB/s out |"
    )
    add(
        f"| our decompressor alone ({c['decoder']}, bounded 1 MiB blocks) | {fmt_s(c['decoder_s'])} | "
        f"{c['extracted_bytes'] / c['decoder_s'] / MB:.0f} MB/s out |"
    )
    add(
        f"| stdlib zlib alone (what tensorflow_hub's tarfile uses) | {fmt_s(c['stdlib_s'])} | "
        f"{c['extracted_bytes'] / c['stdlib_s'] / MB:.0f} MB/s out |"
    )
    failures = [
        f"{x.action}: {x.error}"
        for group in (cold["ours"], cold["hub"], many["ours"], many["hub"], imp)
        for x in group
        if not x.ok
    ]
    if failures:
        add("")
        add("Failed runs: " + "; ".join(failures))
    return "\n".join(lines)


def write_readme(table: str) -> None:
    path = HERE / "README.md"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{README_BEGIN}\n{README_END}\n"
    if README_BEGIN not in text:
        text += f"\n{README_BEGIN}\n{README_END}\n"
    head, _, rest = text.partition(README_BEGIN)
    _, _, tail = rest.partition(README_END)
    path.write_text(f"{head}{README_BEGIN}\n{table}\n{README_END}{tail}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 MB model, 10 small models, 1 round: a smoke run")
    p.add_argument("--size-mb", type=int, default=512, help="the big model's size in MiB (default 512)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of each cold/warm measurement")
    p.add_argument("--calls", type=int, default=300, help="warm in-process calls per contender")
    p.add_argument("--small-count", type=int, default=40)
    p.add_argument("--small-params", type=int, default=256 * 1024, help="float32 weights per small model (1 MiB)")
    p.add_argument("--many-rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--gcs-rounds", type=int, default=1)
    p.add_argument("--import-rounds", type=int, default=5)
    p.add_argument("--skip-gcs", action="store_true")
    p.add_argument("--skip-hub-gcs", action="store_true", help="skip tensorflow_hub's own gs:// run (slowest part)")
    p.add_argument("--hub-gcs-timeout", type=float, default=240.0)
    p.add_argument("--cache-root", default=str(HERE / ".work"), help="where the contenders' caches go")
    p.add_argument("--tmpfs-root", default="/dev/shm/tfhub-bench", help="also time cold stages on tmpfs ('' skips)")
    p.add_argument("--tmpfs-rounds", type=int, default=3)
    p.add_argument("--readme", action="store_true", help="also write the table into benchmarks/README.md")
    p.add_argument("--net-rounds", type=int, default=3, help="rounds on loopback and at 40 MB/s per connection")
    p.add_argument("--slow-rounds", type=int, default=1, help="rounds at 10 MB/s per connection (~50 s each for hub)")
    p.add_argument("--connections", type=int, default=0, help="TFHUB_DOWNLOAD_CONNECTIONS for ours (0: default)")
    p.add_argument("--network-only", action="store_true", help="only the network table (loopback, 40 and 10 MB/s)")
    args = p.parse_args(argv)
    if args.quick:
        args.size_mb, args.rounds, args.calls, args.small_count = 64, 1, 100, 10
        args.many_rounds, args.import_rounds, args.tmpfs_rounds = 1, 2, 1
        args.net_rounds = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
    work = HERE / ".work"
    work.mkdir(parents=True, exist_ok=True)
    small_big = 64 if args.size_mb != 64 else 16
    bench = Bench(args, work)
    shutil.rmtree(Path(args.cache_root) / "caches", ignore_errors=True)  # an interrupted run's leftovers
    bench.data = build_models(work, args.size_mb, small_big, args.small_count, args.small_params)
    big, small = f"big{args.size_mb}", f"big{small_big}"
    with HubServerProcess(bench.data["root"]) as hub:
        bench.hub_url = hub.url
        bench.storage_url = hub.control.info()["storage_url"]
        bench.results["networks"] = [
            bench.network(big, "loopback", None, 0.0, args.net_rounds),
            bench.network(big, "40 MB/s", 40 * MB, 0.020, args.net_rounds),
            bench.network(big, "10 MB/s", 10 * MB, 0.020, args.slow_rounds),
        ]
        if args.network_only:
            return finish(bench, big, started, load_start, None)
        bench.ceilings(big)
        bench.results["cold"] = bench.cold(big, args.rounds)
        bench.results["warm"] = bench.warm(big)
        bench.results["cold_small"] = bench.cold(small, 1)
        if args.tmpfs_root and os.path.isdir(os.path.dirname(args.tmpfs_root.rstrip("/"))):
            bench.results["cold_tmpfs"] = bench.cold(big, args.tmpfs_rounds, root=args.tmpfs_root)
        bench.results["many"] = bench.many()
        if not args.skip_gcs:
            bench.results["gcs"] = bench.gcs(big)
    bench.results["imports"] = bench.imports()
    return finish(bench, big, started, load_start, small)


def finish(bench: Bench, big: str, started: float, load_start: str, small: str | None) -> int:
    args = bench.args
    shutil.rmtree(Path(args.cache_root) / "caches", ignore_errors=True)
    if args.tmpfs_root:
        shutil.rmtree(args.tmpfs_root, ignore_errors=True)
    load_end = " ".join(f"{x:.1f}" for x in os.getloadavg())
    if small is None:
        table = "\n".join(
            [
                f"Command: `python benchmarks/run.py {' '.join(sys.argv[1:])}`, "
                f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, total {time.time() - started:.0f} s.  ",
                f"Machine: {machine()}; load average at start {load_start}, at end {load_end}.  ",
                f"Versions: {versions()}.  ",
                "",
                *network_report(bench, big),
            ]
        )
    else:
        table = report(bench, big, small, started, (load_start, load_end))
    print(table)
    (bench.work / "results.md").write_text(table + "\n")
    if args.readme:
        write_readme(table)
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log(f"done in {time.time() - started:.0f} s (runner RSS {self_rss:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
