"""Decoder ceilings for issue 12: ISA-L (our streaming decoder) vs rapidgzip (parallel, needs a seekable file).

``python benchmarks/decoders.py [ARCHIVE] [ROUNDS]``: decompresses the benchmark archive (default: the
512 MiB model's, built by ``make bench``) to nothing, alternating decoders, each in a fresh process;
prints wall and CPU seconds per run and the load average. rapidgzip is optional (``pip install
rapidgzip``); it is not a dependency of the provider (see benchmarks/README.md for why).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = HERE / ".work" / "models" / "big512" / "model.tar.gz"


def decode(kind: str, archive: str) -> dict[str, float]:
    started = time.perf_counter()
    total = 0
    if kind == "isal":
        from isal import isal_zlib

        d = isal_zlib.decompressobj(31)
        with open(archive, "rb") as f:
            while chunk := f.read(1 << 20):
                total += len(d.decompress(chunk))
    else:
        import rapidgzip

        with rapidgzip.open(archive, parallelization=int(kind.split("-")[1])) as f:
            while block := f.read(1 << 20):
                total += len(block)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall": time.perf_counter() - started,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
        "bytes": total,
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(decode(sys.argv[2], sys.argv[3])))
        return 0
    archive = sys.argv[1] if len(sys.argv) > 1 else str(DEFAULT)
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    kinds = ["isal"]
    try:
        import rapidgzip  # noqa: F401

        kinds += ["rapidgzip-1", "rapidgzip-2"]
    except ImportError:
        print("rapidgzip is not installed (pip install rapidgzip): measuring ISA-L only")
    print(f"load average at start: {os.getloadavg()}")
    for i in range(rounds):
        for kind in kinds if i % 2 == 0 else kinds[::-1]:
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind, archive], capture_output=True, text=True, check=True
            )
            r = json.loads(out.stdout)
            print(f"{kind:12s} wall {r['wall']:.2f}s cpu {r['cpu']:.2f}s rss {r['rss_mb']:.0f}MB ({r['bytes']} bytes)")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
