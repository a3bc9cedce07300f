"""Command line of the test hub: ``python -m tfhub_cache.testing.hub --root DIR [--port N] ...``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from tfhub_cache.testing.hub.process import MODULE
from tfhub_cache.testing.hub.server import HubServer


def write_port_file(path: Path, port: int) -> None:
    """Atomically, so a shell script polling for the file never reads it half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description="Fake TF Hub server on 127.0.0.1 (tests, demo, benchmarks)."
    )
    parser.add_argument("--root", type=Path, help="serve every DIR/<a>/<b>/<c>.tar.gz as model /<a>/<b>/<c>")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="hub port (default: a free port)")
    parser.add_argument("--storage-port", type=int, default=0, help="second listener's port (default: free)")
    parser.add_argument("--port-file", type=Path, help="write the hub port to this file once listening")
    parser.add_argument(
        "--uncompressed-prefix", help="e.g. gs://tfhub-modules: 303 answers <prefix>/<path>/uncompressed"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    parser.add_argument(
        "--bandwidth-per-connection",
        type=float,
        metavar="MBPS",
        help="WAN model: cap each connection's body rate at this many MB/s (10^6 bytes; default: uncapped)",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="WAN model: sleep this long before each response (default 0)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tfhub_cache.testing.hub``; serves until SIGTERM/SIGINT."""
    args = parse_args(argv)
    server = HubServer(
        host=args.host,
        port=args.port,
        storage_port=args.storage_port,
        root=args.root,
        uncompressed_prefix=args.uncompressed_prefix,
        verbose=args.verbose,
        bandwidth_bytes_per_s=args.bandwidth_per_connection * 1e6 if args.bandwidth_per_connection else None,
        latency_s=args.latency_ms / 1e3,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server.start()
    try:
        if args.port_file is not None:
            write_port_file(args.port_file, server.port)
        print(f"READY {server.url}", flush=True)
        if args.verbose:
            print(f"storage listener {server.storage_url}; models: {server.model_paths()}", file=sys.stderr)
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
    return 0
