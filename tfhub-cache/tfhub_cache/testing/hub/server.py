"""The in-process test hub: two loopback listeners, the model registry, faults, the WAN model and stats."""

from __future__ import annotations

import collections
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from tfhub_cache.testing.hub.faults import Faults, FaultState, ResponsePlan
from tfhub_cache.testing.hub.handler import Listener
from tfhub_cache.testing.hub.registry import ARCHIVE_SUFFIXES, RESERVED_PREFIXES, Archive, Model, archive_suffix

MAX_RECORDS = 1000
"""How many recent request records ``stats()`` keeps; enough for any test, bounded for benchmarks."""

COUNTERS = (
    "page",
    "compressed",
    "redirect",
    "archive_full",
    "archive_range",
    "not_modified",
    "uncompressed",
    "head",
    "faulted",
    "bytes_sent",
)
"""The per-path counters of ``stats()`` (see :meth:`HubServer.stats`)."""


class HubServer:
    """The fake TF Hub: two loopback listeners (hub + "storage"), a model registry, faults and stats.

    Thread-safe: tests may reconfigure it while clients are downloading. Usage::

        with HubServer() as hub:
            hub.add_model("/google/demo/1", archive, uncompressed_location="gs://b/google/demo/1/uncompressed")
            handle = hub.model_url("/google/demo/1")     # what a user would pass to hub.load()
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        storage_port: int = 0,
        root: str | os.PathLike[str] | None = None,
        uncompressed_prefix: str | None = None,
        verbose: bool = False,
        bandwidth_bytes_per_s: float | None = None,
        latency_s: float = 0.0,
    ) -> None:
        """``root``: directory scanned at ``start()``; ``DIR/a/b/c.tar.gz`` becomes model ``/a/b/c`` (and
        archive ``/archives/a/b/c.tar.gz``). ``uncompressed_prefix`` (e.g. ``gs://tfhub-modules``) gives those
        models an uncompressed location ``<prefix>/a/b/c/uncompressed``, the naming tfhub.dev used.
        ``bandwidth_bytes_per_s`` and ``latency_s``: the WAN model (see the module docstring)."""
        self.host = host
        self.bandwidth_bytes_per_s: float | None = None
        self.latency_s = 0.0
        self.set_network(bandwidth_bytes_per_s=bandwidth_bytes_per_s, latency_s=latency_s)
        self.verbose = verbose
        self._requested_ports = (port, storage_port)
        self._root = Path(root) if root is not None else None
        self._uncompressed_prefix = uncompressed_prefix
        self._lock = threading.Lock()
        self._models: dict[str, Model] = {}
        self._archives: dict[str, Archive] = {}
        self._faults: dict[str, FaultState] = {}
        self._generation = 0
        self._listeners: list[Listener] = []
        self._threads: list[threading.Thread] = []
        self._init_stats()

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        """Bind both listeners (port 0 = a free port each) and serve them in daemon threads."""
        if self._listeners:
            return self
        main = Listener((self.host, self._requested_ports[0]), self, "main")
        try:
            storage = Listener((self.host, self._requested_ports[1]), self, "storage")
        except OSError:
            main.server_close()
            raise
        self._listeners = [main, storage]
        for listener in self._listeners:
            thread = threading.Thread(
                target=listener.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"hub-server-{listener.name}-{listener.server_address[1]}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        if self._root is not None:
            self.add_root(self._root, uncompressed_prefix=self._uncompressed_prefix)
        return self

    def stop(self) -> None:
        """Stop listening and cut open connections (keep-alive clients would otherwise linger)."""
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.shutdown()
            listener.server_close()
            listener.close_connections()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _listener(self, index: int) -> Listener:
        if not self._listeners:
            raise RuntimeError("HubServer is not started")
        return self._listeners[index]

    @property
    def port(self) -> int:
        return int(self._listener(0).server_address[1])

    @property
    def storage_port(self) -> int:
        return int(self._listener(1).server_address[1])

    @property
    def url(self) -> str:
        """Base URL of the hub listener, e.g. ``http://127.0.0.1:40123`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    @property
    def storage_url(self) -> str:
        """Base URL of the second ("storage") listener: another port, hence another origin."""
        return f"http://{self.host}:{self.storage_port}"

    def model_url(self, path: str) -> str:
        """The handle a user would pass to ``hub.load`` for a registered model path."""
        return self.url + quote(path)

    def archive_url(self, name: str) -> str:
        """The direct URL of an archive registered with :meth:`add_archive`."""
        return self.url + "/archives/" + quote(name)

    # -- registry -------------------------------------------------------------------------------------

    def _new_archive(self, file: str | os.PathLike[str], previous: Archive | None) -> Archive:
        path = Path(file).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"archive {path} does not exist")
        self._generation += 1
        archive = Archive(path, self._generation)
        if previous is not None:
            archive.floor_last_modified = max(previous.last_modified, previous.floor_last_modified)
        return archive

    def add_model(
        self,
        path: str,
        archive_file: str | os.PathLike[str],
        *,
        uncompressed_location: str | None = None,
        separate_storage: bool = True,
    ) -> str:
        """Register (or replace) model ``path`` (like ``/google/demo/1``) served from ``archive_file``.

        Replacing always changes the ETag and moves Last-Modified forward, like an upstream re-publish.
        ``separate_storage=False`` keeps the final hop on the hub listener (same origin). Returns the
        model URL.
        """
        path = "/" + path.strip("/")
        if path == "/" or path.startswith(RESERVED_PREFIXES):
            raise ValueError(f"invalid model path {path!r}")
        with self._lock:
            previous = self._models.get(path)
            archive = self._new_archive(archive_file, previous.archive if previous else None)
            self._models[path] = Model(path, archive, uncompressed_location, separate_storage)
            self._stats_models.setdefault(path, dict.fromkeys(COUNTERS, 0))
        return self.model_url(path)

    def remove_model(self, path: str) -> None:
        with self._lock:
            self._models.pop("/" + path.strip("/"), None)

    def add_archive(self, name: str, archive_file: str | os.PathLike[str]) -> str:
        """Serve ``archive_file`` at ``/archives/<name>`` (a direct ``.tar.gz`` handle); returns its URL."""
        name = name.strip("/")
        if not name:
            raise ValueError("empty archive name")
        with self._lock:
            archive = self._new_archive(archive_file, self._archives.get(name))
            self._archives[name] = archive
            self._stats_models.setdefault("/archives/" + name, dict.fromkeys(COUNTERS, 0))
        return self.archive_url(name)

    def add_root(self, root: str | os.PathLike[str], *, uncompressed_prefix: str | None = None) -> list[str]:
        """Register every archive under ``root`` as a model and as an archive; return the model paths."""
        root = Path(root)
        paths = []
        for file in sorted(root.rglob("*")):
            if not file.is_file() or not file.name.endswith(ARCHIVE_SUFFIXES):
                continue
            rel = file.relative_to(root).as_posix()
            model_path = "/" + rel.removesuffix(archive_suffix(rel))
            location = None
            if uncompressed_prefix:
                location = uncompressed_prefix.rstrip("/") + model_path + "/uncompressed"
            self.add_model(model_path, file, uncompressed_location=location)
            self.add_archive(rel, file)
            paths.append(model_path)
        return paths

    def model_paths(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def info(self) -> dict[str, Any]:
        """URLs and registry, for subprocess users who only know the hub URL."""
        with self._lock:
            models = {
                p: {
                    "archive": str(m.archive.file),
                    "uncompressed_location": m.uncompressed_location,
                    "separate_storage": m.separate_storage,
                }
                for p, m in self._models.items()
            }
            archives = {n: str(a.file) for n, a in self._archives.items()}
        return {"url": self.url, "storage_url": self.storage_url, "models": models, "archives": archives}

    def find_model(self, path: str) -> Model | None:
        with self._lock:
            return self._models.get("/" + path.strip("/"))

    def find_model_by_storage_path(self, storage_path: str) -> Model | None:
        with self._lock:
            for model in self._models.values():
                if model.storage_path == storage_path:
                    return model
        return None

    def find_archive(self, name: str) -> Archive | None:
        with self._lock:
            return self._archives.get(name.strip("/"))

    def validators_of(self, archive: Archive) -> tuple[int, str, int]:
        with self._lock:
            return archive.validators()

    # -- network model --------------------------------------------------------------------------------

    def set_network(self, *, bandwidth_bytes_per_s: float | None = None, latency_s: float = 0.0) -> None:
        """Cap every connection's body rate (None: uncapped) and sleep ``latency_s`` before each response.

        Takes effect for responses that start afterwards; ``set_network()`` restores plain loopback.
        """
        if bandwidth_bytes_per_s is not None and bandwidth_bytes_per_s <= 0:
            raise ValueError(f"bandwidth_bytes_per_s must be positive or None, not {bandwidth_bytes_per_s!r}")
        if latency_s < 0:
            raise ValueError(f"latency_s must be >= 0, not {latency_s!r}")
        self.bandwidth_bytes_per_s = float(bandwidth_bytes_per_s) if bandwidth_bytes_per_s else None
        self.latency_s = float(latency_s)

    # -- faults ---------------------------------------------------------------------------------------

    def set_faults(self, path: str, **faults: Any) -> None:
        """Replace the faults of ``path`` (a model path, ``/archives/<name>``, or ``"*"`` for every path).

        Counters (``fail_times``, ``cut_times``) restart from the given values. See :class:`Faults`.
        """
        parsed = Faults.from_mapping(faults)
        key = path if path == "*" else "/" + path.strip("/")
        with self._lock:
            self._faults[key] = FaultState(parsed, parsed.fail_times, parsed.cut_times)

    def clear_faults(self, path: str | None = None) -> None:
        with self._lock:
            if path is None:
                self._faults.clear()
            else:
                self._faults.pop(path if path == "*" else "/" + path.strip("/"), None)

    def plan_response(self, key: str, *, hop: str) -> ResponsePlan:
        """Decide this response's faults and consume the per-path counters atomically."""
        with self._lock:
            state = self._faults.get(key) or self._faults.get("*")
            if state is None:
                return ResponsePlan()
            f = state.faults
            plan = ResponsePlan(fail_status=f.fail_status, retry_after=f.retry_after)
            if f.fail_on in (hop, "any") and state.fail_left != 0:
                plan.fail = True
                if state.fail_left > 0:
                    state.fail_left -= 1
                return plan
            if hop != "archive":
                return plan
            plan.html = f.html_instead
            plan.no_range = f.no_range
            plan.range_ignored = f.range_ignored
            plan.delay_s = f.delay_s
            plan.rate = f.rate_bytes_per_s
            plan.truncate_to = f.truncate_to
            plan.stall_after = f.stall_after_bytes
            plan.stall_s = f.stall_s
            if f.cut_after_bytes is not None and (state.cut_left is None or state.cut_left > 0):
                plan.cut_after = f.cut_after_bytes
                if state.cut_left is not None:
                    state.cut_left -= 1
            return plan

    # -- stats ----------------------------------------------------------------------------------------

    def _init_stats(self) -> None:
        self._stats_requests = 0
        self._stats_not_found = 0
        self._stats_listeners: collections.Counter[str] = collections.Counter()
        self._stats_models: dict[str, dict[str, int]] = {
            p: dict.fromkeys(COUNTERS, 0) for p in getattr(self, "_models", {})
        }
        for name in getattr(self, "_archives", {}):
            self._stats_models["/archives/" + name] = dict.fromkeys(COUNTERS, 0)
        self._records: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_RECORDS)

    def reset_stats(self) -> None:
        with self._lock:
            self._init_stats()

    def count(self, key: str | None, counter: str, amount: int = 1) -> None:
        with self._lock:
            if key is None:
                self._stats_not_found += amount
            else:
                self._stats_models.setdefault(key, dict.fromkeys(COUNTERS, 0))[counter] += amount

    def record_request(self, record: dict[str, Any]) -> None:
        """Count one answered request (not a control request) and keep its record for ``stats()``."""
        with self._lock:
            self._stats_requests += 1
            self._stats_listeners[record["listener"]] += 1
            self._records.append(record)

    def stats(self) -> dict[str, Any]:
        """Snapshot of the counters (JSON-serialisable; the same document as ``GET /_control/stats``).

        ``models[<path>]`` has ``page``, ``compressed`` (first hop), ``redirect`` (second hop),
        ``archive_full`` (200 bodies started), ``archive_range`` (206), ``not_modified`` (304),
        ``uncompressed``, ``head``, ``faulted`` (injected failures/HTML) and ``bytes_sent`` (body bytes
        actually written). Archives served via ``/archives/<name>`` are keyed ``/archives/<name>``.
        ``recent`` holds the last 1000 request records (control requests are not counted).
        """
        with self._lock:
            return {
                "requests": self._stats_requests,
                "not_found": self._stats_not_found,
                "by_listener": dict(self._stats_listeners),
                "models": {k: dict(v) for k, v in self._stats_models.items()},
                "recent": [dict(r) for r in self._records],
            }

    def records(self, path: str | None = None) -> list[dict[str, Any]]:
        """Recent request records, optionally only those whose path is exactly ``path``."""
        recent: list[dict[str, Any]] = self.stats()["recent"]
        return [r for r in recent if path is None or r["path"] == path]
