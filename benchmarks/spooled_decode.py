"""Would a parallel gzip decoder win inside the download? Issue 12's experiment, on the modelled WAN.

``python benchmarks/spooled_decode.py [--rounds N] [--bandwidth MB_PER_S] [--latency S]`` (after ``make
bench`` has built ``benchmarks/.work``; rapidgzip is optional: ``pip install rapidgzip``).

rapidgzip decodes one gzip stream on several cores, but only from a seekable file. The one way to give
it that without giving up the overlap of download and inflate is to **spool**: 8 connections write
their ``Range`` parts at their offsets into a sparse temporary file, and the decoder reads that file
through a reader that blocks until the bytes it asks for have arrived (rapidgzip's speculative
workers read ahead, so they simply wait for the network there). This script measures that design
against the production pipeline, each contender a fresh process, rounds alternating, on the
benchmark hub with a per-connection cap:

* ``ours``: the whole ``tfhub-cache stage`` process (in-memory parts, ISA-L streaming inflate);
* ``spool-isal``: the spool design with ISA-L (what the spool costs by itself);
* ``spool-rapidgzip-N``: the spool design with rapidgzip on N threads.

Both spool contenders extract through the provider's own extractor and tree sink
(``core.extract.extract_archive`` into a ``LocalStorage`` sink) and hash the archive, so they differ
from ``ours`` only in the download and the decoder. Each reports wall, CPU (user + system) and peak
RSS. Results and the decision they led to are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

MB = 1_000_000
MODEL = "big512"


class SpooledArchive(io.RawIOBase):
    """A sparse temporary file filled by parallel ``Range`` requests; reads block until their bytes are in."""

    def __init__(self, url: str, size: int, directory: str, connections: int, part_size: int) -> None:
        super().__init__()
        import requests

        self.url, self.size, self.part_size = url, size, part_size
        fd, self.path = tempfile.mkstemp(dir=directory, suffix=".spool")
        self.fd = fd
        os.ftruncate(fd, size)
        self.parts = (size + part_size - 1) // part_size
        self.done = [False] * self.parts
        self.contiguous = 0  # parts [0, contiguous) are all in
        self.cond = threading.Condition()
        self.next_part = 0
        self.failure: BaseException | None = None
        self.pos = 0
        self._session_factory = requests.Session
        self.workers = [threading.Thread(target=self._work, daemon=True) for _ in range(connections)]
        for worker in self.workers:
            worker.start()

    def _work(self) -> None:
        session = self._session_factory()
        buffer = memoryview(bytearray(self.part_size))
        try:
            while True:
                with self.cond:
                    index = self.next_part
                    self.next_part += 1
                if index >= self.parts:
                    return
                start = index * self.part_size
                length = min(self.size, start + self.part_size) - start
                resp = session.get(self.url, headers={"Range": f"bytes={start}-{start + length - 1}"}, stream=True)
                if resp.status_code != 206:
                    raise OSError(f"part at {start}: HTTP {resp.status_code}")
                got = 0
                while got < length:
                    n = resp.raw.readinto(buffer[got:length])
                    if not n:
                        raise OSError(f"part at {start} ended after {got} of {length} bytes")
                    got += n
                os.pwrite(self.fd, buffer[:length], start)
                with self.cond:
                    self.done[index] = True
                    while self.contiguous < self.parts and self.done[self.contiguous]:
                        self.contiguous += 1
                    self.cond.notify_all()
        except BaseException as exc:
            with self.cond:
                self.failure = exc
                self.cond.notify_all()

    def wait_for(self, end: int) -> None:
        """Block until bytes ``[.., end)`` can be read (the parts they lie in have arrived)."""
        first = 0
        last = min(self.parts - 1, (end - 1) // self.part_size)
        with self.cond:
            while True:
                if self.failure is not None:
                    raise self.failure
                first = max(first, self.contiguous)
                if first > last or all(self.done[first : last + 1]):
                    return
                self.cond.wait()

    # the raw file interface rapidgzip and extract_archive read through
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        self.wait_for(self.pos + n)
        got = os.preadv(self.fd, [memoryview(b)[:n]], self.pos)
        self.pos += got
        return got

    def sha256(self) -> str:
        digest, pos = hashlib.sha256(), 0
        while pos < self.size:
            n = min(8 << 20, self.size - pos)
            self.wait_for(pos + n)
            digest.update(os.pread(self.fd, n, pos))
            pos += n
        return digest.hexdigest()

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
            os.unlink(self.path)
        super().close()


def spool_stage(url: str, cache: str, decoder: str, connections: int, part_size: int) -> dict[str, Any]:
    """One contender: resolve like a client, spool with ``connections``, decode with ``decoder``, extract."""
    import requests

    from tfhub_cache.archive.extract import extract_archive
    from tfhub_cache.storage.local import LocalStorage

    started = time.perf_counter()
    probe = requests.get(url, params={"tf-hub-format": "compressed"}, headers={"Range": "bytes=0-0"}, stream=True)
    final, size = probe.url, int(probe.headers["Content-Range"].rsplit("/", 1)[1])
    probe.close()
    spool = SpooledArchive(final, size, cache, connections, part_size)
    hashed: dict[str, str] = {}
    hasher = threading.Thread(target=lambda: hashed.update(sha=spool.sha256()))
    hasher.start()
    raw: Any = spool
    if decoder.startswith("rapidgzip"):
        import rapidgzip

        raw = rapidgzip.RapidgzipFile(spool, parallelization=int(decoder.rsplit("-", 1)[1]))
    sink = LocalStorage(cache).open_sink("model", "model.tmp")
    stats = extract_archive(io.BufferedReader(raw, 4 << 20) if raw is spool else raw, sink, source=url)
    sink.finish()
    hasher.join()
    if raw is not spool:
        raw.close()
    spool.close()
    return {"seconds": time.perf_counter() - started, "files": stats.files, "sha256": hashed.get("sha", "")}


def child(kind: str, url: str, cache: str, connections: int, part_size: int) -> None:
    result = spool_stage(url, cache, kind.removeprefix("spool-"), connections, part_size)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update(cpu=usage.ru_utime + usage.ru_stime, rss_mb=usage.ru_maxrss / 1024)
    print("RESULT " + json.dumps(result))


def run(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[:3]} failed: {err.strip().splitlines()[-1:]}")
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    result: dict[str, Any] = json.loads(lines[-1][7:]) if lines else {}
    result.update(wall=wall, cpu=usage.ru_utime + usage.ru_stime, rss_mb=usage.ru_maxrss / 1024)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bandwidth", type=float, default=40.0, help="MB/s per connection (0: uncapped)")
    p.add_argument("--latency", type=float, default=0.020, help="seconds before each response")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--part-mib", type=int, default=2)
    p.add_argument("--cache-root", default=str(HERE / ".work" / "caches"))
    p.add_argument("--child", nargs=3, metavar=("KIND", "URL", "CACHE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    part_size = args.part_mib << 20
    if args.child:
        kind, url, cache = args.child
        child(kind, url, cache, args.connections, part_size)
        return 0

    from tfhub_cache.testing.hub import HubServerProcess

    root = HERE / ".work" / "hubroot"
    if not (root / "bench" / MODEL).is_dir():
        print(f"{root} has no {MODEL}: run `make bench BENCH_ARGS=--quick` (or `make bench`) once first.")
        return 2
    kinds = ["ours", "spool-isal"]
    try:
        import rapidgzip  # noqa: F401

        kinds += ["spool-rapidgzip-2"]
    except ImportError:
        print("rapidgzip is not installed (pip install rapidgzip): measuring the spool with ISA-L only")
    cli = str(Path(sys.executable).with_name("tfhub-cache"))
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with HubServerProcess(root) as hub:
        hub.control.set_network(bandwidth_bytes_per_s=args.bandwidth * MB or None, latency_s=args.latency)
        url = f"{hub.url}/bench/{MODEL}/1"
        env = dict(os.environ, TFHUB_DOWNLOAD_CONNECTIONS=str(args.connections))
        for i in range(args.rounds):
            for kind in kinds if i % 2 == 0 else kinds[::-1]:
                cache = Path(args.cache_root) / f"spool-{kind}-r{i}"
                shutil.rmtree(cache, ignore_errors=True)
                cache.mkdir(parents=True)
                subprocess.run(["sync"], check=False)
                if kind == "ours":
                    argv = [cli, "stage", url, "--cache-dir", str(cache), "--json"]
                else:
                    argv = [sys.executable, __file__, "--child", kind, url, str(cache)]
                    argv[2:2] = ["--connections", str(args.connections), "--part-mib", str(args.part_mib)]
                r = run(argv, env)
                results[kind].append(r)
                print(f"{kind:18s} wall {r['wall']:.2f}s  CPU {r['cpu']:.2f}s  peak RSS {r['rss_mb']:.0f} MB")
                shutil.rmtree(cache, ignore_errors=True)
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    network = f"{args.bandwidth:g} MB/s per connection, {args.latency * 1000:g} ms, {args.connections} connections"
    print(f"\nmedians, {network}:\n| contender | wall | CPU | peak RSS |\n|---|---|---|---|")
    for kind, runs in results.items():
        wall = sorted(r["wall"] for r in runs)[len(runs) // 2]
        cpu = sorted(r["cpu"] for r in runs)[len(runs) // 2]
        rss = max(r["rss_mb"] for r in runs)
        print(f"| {kind} | {wall:.2f} s | {cpu:.2f} s | {rss:.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
