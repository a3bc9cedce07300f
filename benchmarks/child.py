"""One contender's run, in its own process: ``python benchmarks/child.py ACTION JSON-ARGS``.

Why a process per run: peak RSS is per process (the parent reads it with ``wait4``), imports are
part of the "whole process" figure, and neither contender inherits the other's warm state (page
cache aside, which both share alike). The child prints exactly one JSON line, prefixed ``RESULT``,
with the figures it measured itself (``seconds``: the timed call only, imports excluded).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def _emit(**values: Any) -> None:
    print("RESULT " + json.dumps(values), flush=True)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


# -- contenders: ours ---------------------------------------------------------------------------------


def ours_cold(args: dict[str, Any]) -> None:
    from tfhub_cache.cache.staging import stage

    _import_ours()

    seconds, result = _timed(lambda: stage(args["url"], args["cache"]))
    assert result["downloaded"], result
    _emit(seconds=seconds, bytes=result["bytes"], archive_bytes=result["archive_bytes"])


def ours_warm(args: dict[str, Any]) -> None:
    from tfhub_cache.cache.staging import stage

    first, result = _timed(lambda: stage(args["url"], args["cache"]))
    assert not result["downloaded"], "the warm benchmark needs a staged cache"
    samples = []
    for _ in range(int(args.get("calls", 1)) - 1):
        started = time.perf_counter()
        stage(args["url"], args["cache"])
        samples.append(time.perf_counter() - started)
    _emit(seconds=first, median=statistics.median(samples) if samples else first, samples=len(samples) + 1)


def ours_tiered(args: dict[str, Any]) -> None:
    """One host of a fleet: its local cache in front of the shared gs:// cache (benchmarks/fleet.py)."""
    from tfhub_cache.cache.tiers import stage_tiered

    _import_ours()
    import tfhub_cache.storage.gcs  # noqa: F401

    seconds, result = _timed(lambda: stage_tiered(args["url"], args["cache"], upstream_cache=args["upstream"]))
    _emit(seconds=seconds, downloaded=result["downloaded"], revision=result["revision"])


def ours_pull(args: dict[str, Any]) -> None:
    """Pull a staged revision from the shared gs:// cache into a fresh local cache (benchmarks/fleet.py)."""
    from tfhub_cache.cache.pull import pull

    _import_ours()
    import tfhub_cache.storage.gcs  # noqa: F401

    seconds, result = _timed(lambda: pull(args["url"], source=args["upstream"], cache_dir=args["cache"]))
    _emit(seconds=seconds, bytes=result["bytes"], revision=result["revision"])


def _import_ours() -> None:
    """What tensorflow_hub's import does up front, ours does on first use: do it before the clock starts.

    (``requests``, the local storage backend and the decoder are imported lazily, so that importing
    the operators stays cheap; a worker pays for them once, on its first staging.)
    """
    import requests  # noqa: F401

    import tfhub_cache.cache.staging
    import tfhub_cache.storage.local  # noqa: F401
    from tfhub_cache.archive import extract

    extract.gzip_decoder()


def ours_many(args: dict[str, Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tfhub_cache.cache.staging import stage

    _import_ours()

    urls: list[str] = args["urls"]
    with ThreadPoolExecutor(max_workers=int(args["workers"])) as pool:
        seconds, results = _timed(lambda: list(pool.map(lambda u: stage(u, args["cache"]), urls)))
    assert all(r["downloaded"] for r in results)
    _emit(seconds=seconds, models=len(results))


def ours_gcs(args: dict[str, Any]) -> None:
    from tfhub_cache.cache.staging import stage

    options = args.get("storage_options") or None
    seconds, result = _timed(lambda: stage(args["url"], args["cache"], storage_options=options))
    assert result["downloaded"], result
    _emit(seconds=seconds, bytes=result["bytes"])


# -- contenders: tensorflow_hub -----------------------------------------------------------------------


def _hub() -> Any:
    import tensorflow_hub as hub

    return hub


def hub_cold(args: dict[str, Any]) -> None:
    hub = _hub()
    started = time.perf_counter()
    try:
        path = hub.resolve(args["url"])
    except Exception as exc:
        if not args.get("lower_bound"):
            raise
        # tensorflow_hub's gs:// flow against the emulator fails at its very last step (the directory
        # rename); the time it spent until then is a lower bound of what it would have needed.
        _emit(seconds=time.perf_counter() - started, failed=f"{type(exc).__name__}: {str(exc)[:160]}")
        return
    seconds = time.perf_counter() - started
    assert os.path.isfile(os.path.join(path, "saved_model.pb")) or path.startswith("gs://"), path
    _emit(seconds=seconds)


def hub_warm(args: dict[str, Any]) -> None:
    hub = _hub()
    first, _path = _timed(lambda: hub.resolve(args["url"]))
    samples = []
    for _ in range(int(args.get("calls", 1)) - 1):
        started = time.perf_counter()
        hub.resolve(args["url"])
        samples.append(time.perf_counter() - started)
    _emit(seconds=first, median=statistics.median(samples) if samples else first, samples=len(samples) + 1)


def hub_many(args: dict[str, Any]) -> None:
    hub = _hub()
    urls: list[str] = args["urls"]
    seconds, paths = _timed(lambda: [hub.resolve(u) for u in urls])
    _emit(seconds=seconds, models=len(paths))


# -- baselines and ceilings ---------------------------------------------------------------------------


def serial_upload(args: dict[str, Any]) -> None:
    """The same extracted tree uploaded file after file with google-cloud-storage, defaults only."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project="bench", credentials=AnonymousCredentials(), client_options={"api_endpoint": args["endpoint"]}
    )
    bucket = client.bucket(args["bucket"])
    root = args["tree"]

    def upload() -> int:
        count = 0
        for dirpath, _dirs, files in os.walk(root):
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                bucket.blob(f"{args['prefix']}/{rel}").upload_from_filename(path)
                count += 1
        return count

    seconds, count = _timed(upload)
    _emit(seconds=seconds, files=count)


def download(args: dict[str, Any]) -> None:
    """Loopback ceiling: the archive URL read to /dev/null with requests, 1 MiB chunks."""
    import requests

    def run() -> int:
        total = 0
        with requests.get(args["url"], stream=True, timeout=60) as resp:
            resp.raise_for_status()
            for chunk in resp.raw.stream(1 << 20, decode_content=False):
                total += len(chunk)
        return total

    seconds, total = _timed(run)
    _emit(seconds=seconds, bytes=total)


def decompress(args: dict[str, Any]) -> None:
    """Decoder ceiling: the archive file through our streaming decompressor (``decoder``) alone."""
    import zlib

    from tfhub_cache.archive import extract

    def run() -> tuple[int, str]:
        with open(args["archive"], "rb") as f:
            if args.get("decoder") == "zlib":
                chunks = extract.source_chunks(f)
                blocks = extract.inflate_zlib(chunks, lambda: zlib.decompressobj(31), args["archive"])
                name = "zlib"
            else:
                blocks, name = extract.decompressed_blocks(f, args["archive"])
            return sum(len(b) for b in blocks), name

    seconds, (total, name) = _timed(run)
    _emit(seconds=seconds, bytes=total, decoder=name)


def imports(args: dict[str, Any]) -> None:
    """Import time of the operators module on top of Airflow's own import, and whether TF came along."""
    started = time.perf_counter()
    import airflow  # noqa: F401

    airflow_s = time.perf_counter() - started
    started = time.perf_counter()
    import airflow_provider_tfhub.operators.stage  # noqa: F401

    ops_s = time.perf_counter() - started
    _emit(airflow=airflow_s, seconds=ops_s, tensorflow="tensorflow" in sys.modules)


ACTIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    f.__name__: f
    for f in (
        ours_cold,
        ours_tiered,
        ours_pull,
        ours_warm,
        ours_many,
        ours_gcs,
        hub_cold,
        hub_warm,
        hub_many,
        serial_upload,
        download,
        decompress,
        imports,
    )
}

if __name__ == "__main__":
    ACTIONS[sys.argv[1]](json.loads(sys.argv[2]))
