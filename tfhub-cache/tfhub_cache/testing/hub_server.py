"""A loopback HTTP server that speaks the TF Hub protocol, with fault injection and request statistics.

Why a real server rather than mocks: the provider must behave like ``tensorflow_hub`` on the wire
(``?tf-hub-format=compressed`` redirect chains, the ``303`` + ``gs://`` body of the uncompressed format,
HTML pages where an archive was expected) and must survive what real CDNs do (5xx/429, connections cut
mid-body, servers that ignore ``Range``, slow or stalled bodies). Only a socket-level server lets tests,
the demo and the benchmarks exercise urllib, requests and the provider's own HTTP code identically.

Layout of the fake, mimicking tfhub.dev after its move to Kaggle::

    GET /google/demo/1                            200 text/html (the model's web page)
    GET /google/demo/1?tf-hub-format=compressed   302 <url>/kaggle-redirect/google/demo/1?tf-hub-format=compressed
    GET /kaggle-redirect/google/demo/1?...        302 http://127.0.0.1:<storage_port>/storage/google/demo/1.tar.gz
    GET /storage/google/demo/1.tar.gz             200/206/304 the archive (Range, ETag, If-* supported)
    GET /google/demo/1?tf-hub-format=uncompressed 303, body "gs://...", no Location (404 if none set)
    GET /archives/<name>                          the archive registered with ``add_archive(name, file)``

The last hop lives by default on a *second* listener (another port, i.e. another origin), so tests can
verify that credentials are not forwarded across hosts. Both listeners serve every route; the
``listener`` field of the request records tells them apart.

Control endpoints (also used by :class:`HubControl` when the server runs as a subprocess)::

    POST /_control/models      {"path", "archive", "uncompressed_location"?, "separate_storage"?}
    POST /_control/archives    {"name", "archive"}
    POST /_control/faults      {"path" (or "*"), <fault fields of Faults>}
    POST /_control/reset       clear all faults
    POST /_control/reset_stats
    POST /_control/network     {"bandwidth_bytes_per_s": float|null, "latency_s": float} (the WAN model)
    GET  /_control/stats       JSON statistics (see HubServer.stats)
    GET  /_control/info        {"url", "storage_url", "models", "archives"}

Run as a subprocess: ``python -m tfhub_cache.testing.hub_server --root DIR [--port N]
[--port-file F] [--bandwidth-per-connection MBPS] [--latency-ms MS]``; it prints ``READY <url>``
once listening and stops cleanly on SIGTERM/SIGINT.

WAN model: loopback hides what users wait for, so the server can model a real network, for every
route but ``/_control``: ``latency_s`` is slept before each response (a round trip to a far
server), and ``bandwidth_bytes_per_s`` caps the body rate of each connection (one TCP stream to a
CDN or object store rarely gets more than tens of MB/s, whatever the link). Several connections
each get the cap, which is what makes parallel ranged downloads pay off on real networks.

This module imports only the stdlib (no TensorFlow) so that starting it costs milliseconds.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import email.utils
import http.server
import io
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qsl, quote, unquote, urlsplit

__all__ = [
    "ARCHIVE_SUFFIXES",
    "Faults",
    "HubControl",
    "HubServer",
    "HubServerProcess",
    "main",
]

CHUNK_SIZE = 1 << 20
"""Body chunk size: big enough for >1 GB/s on loopback, small enough to cut/stall/throttle precisely."""

MAX_RECORDS = 1000
"""How many recent request records ``stats()`` keeps; enough for any test, bounded for benchmarks."""

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
"""File suffixes recognised as model archives (``--root`` scan, storage URLs, Content-Type)."""

_MODULE = "tfhub_cache.testing.hub_server"

RECORDED_HEADERS = ("Range", "If-None-Match", "If-Modified-Since", "If-Range", "Authorization")
"""Request headers copied into request records: the ones whose presence tests assert on."""

_COUNTERS = (
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
_RESERVED_PREFIXES = ("/_control", "/kaggle-redirect/", "/storage/", "/archives/")


def _archive_suffix(name: str) -> str:
    """Return the archive suffix of ``name`` (``.tar.gz`` by default, so odd names still look gzipped)."""
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ".tar.gz"


def _content_type(name: str) -> str:
    """Content-Type for an archive: what storage.googleapis.com sends for tfhub archives."""
    return "application/x-tar" if name.endswith(".tar") else "application/x-gzip"


def _model_page(path: str) -> bytes:
    """A small HTML page, like the tfhub.dev/Kaggle page a browser (or a confused client) would get."""
    return (
        f"<!DOCTYPE html>\n<html><head><title>Model {path}</title></head>\n"
        f"<body><h1>{path}</h1><p>This is a model page, not a model archive. "
        "Append <code>?tf-hub-format=compressed</code> to download it.</p></body></html>\n"
    ).encode()


@dataclasses.dataclass
class Faults:
    """Faults injected into responses for one model path (or ``"*"`` for every path).

    Unless stated otherwise, faults act on *archive* responses only (the final storage hop and
    ``/archives/...``), because that is where real-world downloads break; the redirect hops stay healthy.

    ``fail_times``/``fail_status``: the first N archive requests answer ``fail_status`` with a small text
    body (``fail_times < 0`` means every request). ``fail_on="compressed"`` makes the *first* hop
    (``?tf-hub-format=compressed``) fail instead, ``"any"`` both. ``retry_after`` adds a Retry-After header.

    ``cut_after_bytes``/``cut_times``: send the headers with the full Content-Length, then close the
    connection after that many body bytes, for ``cut_times`` requests (``None``: every request).

    ``no_range``: ignore ``Range``/``If-Range``, never advertise ``Accept-Ranges`` (servers like that exist).
    ``range_ignored``: advertise ``Accept-Ranges: bytes`` but answer every ``Range`` with 200 and the whole
    body (misconfigured proxies do).

    ``html_instead``: the archive URL answers 200 ``text/html`` (captive portals, login walls).

    ``delay_s``: sleep before the archive response; ``rate_bytes_per_s``: throttle the body;
    ``stall_after_bytes``/``stall_s``: pause once mid-body (read-timeout tests).

    ``truncate_to``: serve only the first N bytes of the file, with a matching Content-Length, i.e. a
    truncated archive that looks complete at the HTTP level (only the tar/gzip layer can notice).
    """

    fail_times: int = 0
    fail_status: int = 500
    fail_on: str = "archive"
    retry_after: float | None = None
    cut_after_bytes: int | None = None
    cut_times: int | None = None
    no_range: bool = False
    html_instead: bool = False
    delay_s: float = 0.0
    rate_bytes_per_s: float | None = None
    truncate_to: int | None = None
    stall_after_bytes: int | None = None
    stall_s: float = 0.0
    range_ignored: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Faults:
        """Build from keyword arguments or JSON, rejecting unknown names so typos don't pass silently."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; known: {sorted(names)}")
        faults = cls(**dict(values))
        if faults.fail_on not in ("archive", "compressed", "any"):
            raise ValueError(f"fail_on must be 'archive', 'compressed' or 'any', not {faults.fail_on!r}")
        return faults


@dataclasses.dataclass
class _FaultState:
    """Faults plus the counters that make ``fail_times``/``cut_times`` apply to the first N requests."""

    faults: Faults
    fail_left: int
    cut_left: int | None


@dataclasses.dataclass
class _Plan:
    """What one archive response must do, decided atomically under the server lock."""

    fail: bool = False
    html: bool = False
    cut_after: int | None = None
    no_range: bool = False
    range_ignored: bool = False
    delay_s: float = 0.0
    rate: float | None = None
    truncate_to: int | None = None
    stall_after: int | None = None
    stall_s: float = 0.0
    fail_status: int = 500
    retry_after: float | None = None


@dataclasses.dataclass
class _Archive:
    """A served file plus the validators derived from its stat, cached until the stat changes.

    ``generation`` is bumped by every (re-)registration, so ``add_model`` always yields a new ETag even if
    the file was overwritten within the filesystem's timestamp granularity with the same size.
    ``floor_last_modified`` keeps Last-Modified strictly increasing across replacements: HTTP dates have
    one-second resolution, and a test that replaces a model twice within a second must still see a change.
    """

    file: Path
    generation: int
    floor_last_modified: int = 0
    stat_key: tuple[int, int, int, int] | None = None
    etag: str = ""
    last_modified: int = 0
    size: int = 0

    def validators(self) -> tuple[int, str, int]:
        """Return ``(size, etag, last_modified)``, re-deriving them only when the file changed."""
        st = os.stat(self.file)
        key = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        if key != self.stat_key:
            last_modified = int(st.st_mtime)
            if self.stat_key is not None or self.floor_last_modified:
                last_modified = max(last_modified, max(self.last_modified, self.floor_last_modified) + 1)
            self.stat_key = key
            self.size = st.st_size
            self.last_modified = last_modified
            self.etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ino:x}-g{self.generation}"'
        return self.size, self.etag, self.last_modified


@dataclasses.dataclass
class _Model:
    path: str
    archive: _Archive
    uncompressed_location: str | None
    separate_storage: bool

    @property
    def storage_path(self) -> str:
        return "/storage" + self.path + _archive_suffix(self.archive.file.name)


class _Unsatisfiable(Exception):
    """The Range header is valid but cannot be satisfied (answer 416)."""


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse a single ``bytes=`` range into inclusive ``(start, end)``; ``None`` means "ignore, send 200".

    Multi-range and malformed headers are ignored, as RFC 9110 allows, because no client of ours sends them.
    """
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0 or size == 0:
                raise _Unsatisfiable
            return max(0, size - suffix), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or (last and end < start):
        return None
    if start >= size:
        raise _Unsatisfiable
    return start, min(end, size - 1)


def _etag_list(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def _weak_equal(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


def _http_date(ts: int) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _parse_http_date(value: str) -> int | None:
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class _Listener(http.server.ThreadingHTTPServer):
    """One listening socket of a :class:`HubServer`; remembers open connections so ``stop()`` can cut them."""

    daemon_threads = True
    request_queue_size = 128  # 8+ clients connecting at once must not hit SYN retries (1 s each)
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], hub: HubServer, name: str) -> None:
        self.hub = hub
        self.name = name
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that go away (they do, on purpose, in tests); report real bugs."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes one connection's requests to the owning :class:`HubServer`."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeTFHub/1.0"
    timeout = 300  # idle keep-alive connections eventually free their thread
    disable_nagle_algorithm = True

    _status: int = 0
    _record_this: bool = False

    def version_string(self) -> str:
        return self.server_version

    @property
    def hub(self) -> HubServer:
        return cast(_Listener, self.server).hub

    @property
    def listener_name(self) -> str:
        return cast(_Listener, self.server).name

    # -- plumbing -----------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        if self.hub.verbose:
            super().log_message(format, *args)

    def send_response(self, code: int, message: str | None = None) -> None:
        """Record the request at the moment its status is decided, so stats are visible to the client
        as soon as it has the response (even for bodies that are cut or stalled afterwards)."""
        self._status = code
        if self._record_this:
            self._record_this = False
            self.hub._record(self, code)
        super().send_response(code, message)

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self._status = 0
        split = urlsplit(self.path)
        self.req_path = unquote(split.path)
        self.req_query = split.query
        self.query = parse_qsl(split.query, keep_blank_values=True)
        self._record_this = not self.req_path.startswith("/_control")
        latency = self.hub.latency_s
        if self._record_this and latency > 0:
            time.sleep(latency)
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            self.close_connection = True

    def _send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any) -> None:
        self._send_bytes(status, json.dumps(payload, indent=1).encode(), "application/json")

    def _not_found(self) -> None:
        self.hub._count(None, "not_found")
        self._send_bytes(404, f"not found: {self.req_path}\n".encode())

    def _redirect(self, status: int, location: str) -> None:
        self._send_bytes(status, f"redirecting to {location}\n".encode(), headers={"Location": location})

    # -- routing ------------------------------------------------------------------------------------

    def _route(self) -> None:
        path = self.req_path
        if path.startswith("/_control"):
            self._control()
        elif self.command == "POST":
            self.close_connection = True  # the unread request body would desynchronise keep-alive
            self._send_bytes(405, b"POST is only for /_control endpoints\n")
        elif path.startswith("/kaggle-redirect/"):
            self._kaggle_hop(path.removeprefix("/kaggle-redirect"))
        elif path.startswith("/storage/"):
            model = self.hub._model_by_storage_path(path)
            if model is None:
                self._not_found()
            else:
                self._serve_archive(model.path, model.archive)
        elif path.startswith("/archives/"):
            archive = self.hub._archive_by_name(path.removeprefix("/archives/"))
            if archive is None:
                self._not_found()
            else:
                self._serve_archive(path, archive)
        elif path == "/":
            self._index()
        else:
            self._model_entry(path)

    def _format(self) -> str | None:
        """The *last* ``tf-hub-format`` value: tensorflow_hub appends its own after any existing one."""
        values = [v for k, v in self.query if k == "tf-hub-format"]
        return values[-1] if values else None

    def _model_entry(self, path: str) -> None:
        model = self.hub._model(path)
        if model is None:
            self._not_found()
            return
        fmt = self._format()
        if fmt is None:
            self.hub._count(model.path, "page")
            self._send_bytes(200, _model_page(model.path), "text/html; charset=utf-8")
        elif fmt == "compressed":
            self.hub._count(model.path, "compressed")
            plan = self.hub._plan(model.path, hop="compressed")
            if plan.fail:
                self._fail(model.path, plan)
                return
            location = self.hub.url + "/kaggle-redirect" + quote(model.path) + "?tf-hub-format=compressed"
            self._redirect(302, location)
        elif fmt == "uncompressed":
            self.hub._count(model.path, "uncompressed")
            if model.uncompressed_location is None:
                self._send_bytes(404, f"no uncompressed location for {model.path}\n".encode())
            else:
                # tensorflow_hub requires exactly this: 303 and the gs:// path as the body. No Location
                # header, or urllib would follow it instead of raising HTTPError(303) with the body.
                self._send_bytes(303, model.uncompressed_location.encode())
        else:
            self._send_bytes(400, f"unknown tf-hub-format {fmt!r}\n".encode())

    def _kaggle_hop(self, path: str) -> None:
        model = self.hub._model(path)
        if model is None:
            self._not_found()
            return
        self.hub._count(model.path, "redirect")
        base = self.hub.storage_url if model.separate_storage else self.hub.url
        self._redirect(302, base + quote(model.storage_path))

    def _index(self) -> None:
        items = "".join(f'<li><a href="{quote(p)}">{p}</a></li>' for p in self.hub.model_paths())
        body = f"<!DOCTYPE html><html><body><h1>Fake TF Hub</h1><ul>{items}</ul></body></html>\n"
        self._send_bytes(200, body.encode(), "text/html; charset=utf-8")

    def _fail(self, key: str, plan: _Plan) -> None:
        self.hub._count(key, "faulted")
        headers = {}
        if plan.retry_after is not None:
            headers["Retry-After"] = f"{plan.retry_after:g}"
        self._send_bytes(plan.fail_status, f"injected failure {plan.fail_status}\n".encode(), headers=headers)

    # -- archives -----------------------------------------------------------------------------------

    def _serve_archive(self, key: str, archive: _Archive) -> None:
        plan = self.hub._plan(key, hop="archive")
        if plan.delay_s > 0:
            time.sleep(plan.delay_s)
        if plan.fail:
            self._fail(key, plan)
            return
        if plan.html:
            self.hub._count(key, "faulted")
            self._send_bytes(200, _model_page(key), "text/html; charset=utf-8")
            return
        try:
            size, etag, last_modified = self.hub._validators(archive)
            handle = open(archive.file, "rb")  # closed by the with-block below
        except FileNotFoundError:
            self._not_found()
            return
        with handle:
            if plan.truncate_to is not None:
                size = min(size, plan.truncate_to)
            self._send_archive(key, archive, handle, size, etag, last_modified, plan)

    def _send_archive(
        self,
        key: str,
        archive: _Archive,
        handle: io.BufferedReader,
        size: int,
        etag: str,
        last_modified: int,
        plan: _Plan,
    ) -> None:
        headers = {"ETag": etag, "Last-Modified": _http_date(last_modified)}
        if not plan.no_range:
            headers["Accept-Ranges"] = "bytes"

        if self._not_modified(etag, last_modified):
            self.hub._count(key, "not_modified")
            self.send_response(304)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            return

        byte_range: tuple[int, int] | None = None
        range_header = self.headers.get("Range")
        if range_header and not (plan.no_range or plan.range_ignored) and self._if_range_ok(etag, last_modified):
            try:
                byte_range = _parse_range(range_header, size)
            except _Unsatisfiable:
                self._send_bytes(416, b"range not satisfiable\n", headers={"Content-Range": f"bytes */{size}"})
                return

        if byte_range is None:
            start, length, status = 0, size, 200
        else:
            start, length, status = byte_range[0], byte_range[1] - byte_range[0] + 1, 206
            headers["Content-Range"] = f"bytes {byte_range[0]}-{byte_range[1]}/{size}"
        if self.command == "HEAD":
            self.hub._count(key, "head")
        else:
            self.hub._count(key, "archive_full" if status == 200 else "archive_range")

        self.send_response(status)
        self.send_header("Content-Type", _content_type(archive.file.name))
        self.send_header("Content-Length", str(length))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        sent = 0
        try:
            sent = self._stream(handle, start, length, plan)
        finally:
            self.hub._count(key, "bytes_sent", sent)

    def _not_modified(self, etag: str, last_modified: int) -> bool:
        inm = self.headers.get("If-None-Match")
        if inm is not None:  # RFC 9110: If-None-Match takes precedence over If-Modified-Since
            tags = _etag_list(inm)
            return "*" in tags or any(_weak_equal(tag, etag) for tag in tags)
        ims = self.headers.get("If-Modified-Since")
        if ims is not None:
            since = _parse_http_date(ims)
            return since is not None and last_modified <= since
        return False

    def _if_range_ok(self, etag: str, last_modified: int) -> bool:
        """``If-Range``: honour the Range only if the client's validator still matches (strong compare)."""
        value = self.headers.get("If-Range")
        if value is None:
            return True
        value = value.strip()
        if value.startswith('"') or value.startswith("W/"):
            return value == etag
        return _parse_http_date(value) == last_modified

    def _stream(self, handle: io.BufferedReader, start: int, length: int, plan: _Plan) -> int:
        """Copy ``length`` bytes from ``start`` in 1 MiB chunks with cut/stall/throttle; return bytes sent."""
        handle.seek(start)
        buf = bytearray(CHUNK_SIZE)
        view = memoryview(buf)
        chunk = CHUNK_SIZE
        cap = self.hub.bandwidth_bytes_per_s
        if cap:
            plan = dataclasses.replace(plan, rate=min(plan.rate, cap) if plan.rate else cap)
        if plan.rate:
            chunk = max(1, min(CHUNK_SIZE, int(plan.rate / 20)))  # ~50 ms slices keep the rate smooth
        sent = 0
        stalled = False
        began = time.monotonic()
        while sent < length:
            limit = min(chunk, length - sent)
            if plan.cut_after is not None:
                if sent >= plan.cut_after:
                    break
                limit = min(limit, plan.cut_after - sent)
            if plan.stall_after is not None and not stalled:
                if sent >= plan.stall_after:
                    stalled = True
                    time.sleep(plan.stall_s)
                    continue
                limit = min(limit, plan.stall_after - sent)
            n = handle.readinto(view[:limit])
            if not n:
                break  # the file shrank under us: end the connection rather than send garbage
            self.wfile.write(view[:n])
            sent += n
            if plan.rate:
                ahead = sent / plan.rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
        if sent < length:
            # Content-Length promised more: closing the socket is the only honest way to say "cut".
            self.close_connection = True
            self.wfile.flush()
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        return sent

    # -- control ------------------------------------------------------------------------------------

    def _read_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        payload = json.loads(raw or b"{}")
        if not isinstance(payload, dict):
            raise ValueError("expected a JSON object")
        return payload

    def _control(self) -> None:
        hub = self.hub
        action = self.req_path.removeprefix("/_control").strip("/")
        try:
            if self.command in ("GET", "HEAD"):
                if action == "stats":
                    self._send_json(200, hub.stats())
                elif action == "info":
                    self._send_json(200, hub.info())
                elif action == "health":
                    self._send_bytes(200, b"ok\n")
                else:
                    self._send_bytes(404, f"unknown control endpoint {action!r}\n".encode())
                return
            payload = self._read_json()
            if action == "models":
                url = hub.add_model(
                    str(payload["path"]),
                    payload["archive"],
                    uncompressed_location=payload.get("uncompressed_location"),
                    separate_storage=bool(payload.get("separate_storage", True)),
                )
                self._send_json(200, {"url": url})
            elif action == "archives":
                url = hub.add_archive(str(payload["name"]), payload["archive"])
                self._send_json(200, {"url": url})
            elif action == "faults":
                path = str(payload.pop("path"))
                hub.set_faults(path, **payload)
                self._send_json(200, {"ok": True})
            elif action == "reset":
                hub.clear_faults()
                self._send_json(200, {"ok": True})
            elif action == "reset_stats":
                hub.reset_stats()
                self._send_json(200, {"ok": True})
            elif action == "network":
                hub.set_network(
                    bandwidth_bytes_per_s=payload.get("bandwidth_bytes_per_s"),
                    latency_s=float(payload.get("latency_s") or 0.0),
                )
                self._send_json(200, {"ok": True})
            else:
                self._send_bytes(404, f"unknown control endpoint {action!r}\n".encode())
        except (KeyError, TypeError, ValueError, OSError) as exc:
            self._send_json(400, {"error": f"{type(exc).__name__}: {exc}"})


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
        self._models: dict[str, _Model] = {}
        self._archives: dict[str, _Archive] = {}
        self._faults: dict[str, _FaultState] = {}
        self._generation = 0
        self._listeners: list[_Listener] = []
        self._threads: list[threading.Thread] = []
        self._init_stats()

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        """Bind both listeners (port 0 = a free port each) and serve them in daemon threads."""
        if self._listeners:
            return self
        main = _Listener((self.host, self._requested_ports[0]), self, "main")
        try:
            storage = _Listener((self.host, self._requested_ports[1]), self, "storage")
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

    def _listener(self, index: int) -> _Listener:
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

    def _new_archive(self, file: str | os.PathLike[str], previous: _Archive | None) -> _Archive:
        path = Path(file).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"archive {path} does not exist")
        self._generation += 1
        archive = _Archive(path, self._generation)
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
        if path == "/" or path.startswith(_RESERVED_PREFIXES):
            raise ValueError(f"invalid model path {path!r}")
        with self._lock:
            previous = self._models.get(path)
            archive = self._new_archive(archive_file, previous.archive if previous else None)
            self._models[path] = _Model(path, archive, uncompressed_location, separate_storage)
            self._stats_models.setdefault(path, dict.fromkeys(_COUNTERS, 0))
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
            self._stats_models.setdefault("/archives/" + name, dict.fromkeys(_COUNTERS, 0))
        return self.archive_url(name)

    def add_root(self, root: str | os.PathLike[str], *, uncompressed_prefix: str | None = None) -> list[str]:
        """Register every archive under ``root`` as a model and as an archive; return the model paths."""
        root = Path(root)
        paths = []
        for file in sorted(root.rglob("*")):
            if not file.is_file() or not file.name.endswith(ARCHIVE_SUFFIXES):
                continue
            rel = file.relative_to(root).as_posix()
            model_path = "/" + rel.removesuffix(_archive_suffix(rel))
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

    def _model(self, path: str) -> _Model | None:
        with self._lock:
            return self._models.get("/" + path.strip("/"))

    def _model_by_storage_path(self, storage_path: str) -> _Model | None:
        with self._lock:
            for model in self._models.values():
                if model.storage_path == storage_path:
                    return model
        return None

    def _archive_by_name(self, name: str) -> _Archive | None:
        with self._lock:
            return self._archives.get(name.strip("/"))

    def _validators(self, archive: _Archive) -> tuple[int, str, int]:
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
            self._faults[key] = _FaultState(parsed, parsed.fail_times, parsed.cut_times)

    def clear_faults(self, path: str | None = None) -> None:
        with self._lock:
            if path is None:
                self._faults.clear()
            else:
                self._faults.pop(path if path == "*" else "/" + path.strip("/"), None)

    def _plan(self, key: str, *, hop: str) -> _Plan:
        """Decide this response's faults and consume the per-path counters atomically."""
        with self._lock:
            state = self._faults.get(key) or self._faults.get("*")
            if state is None:
                return _Plan()
            f = state.faults
            plan = _Plan(fail_status=f.fail_status, retry_after=f.retry_after)
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
            p: dict.fromkeys(_COUNTERS, 0) for p in getattr(self, "_models", {})
        }
        for name in getattr(self, "_archives", {}):
            self._stats_models["/archives/" + name] = dict.fromkeys(_COUNTERS, 0)
        self._records: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_RECORDS)

    def reset_stats(self) -> None:
        with self._lock:
            self._init_stats()

    def _count(self, key: str | None, counter: str, amount: int = 1) -> None:
        with self._lock:
            if key is None:
                self._stats_not_found += amount
            else:
                self._stats_models.setdefault(key, dict.fromkeys(_COUNTERS, 0))[counter] += amount

    def _record(self, handler: _Handler, status: int) -> None:
        headers = {name: handler.headers[name] for name in RECORDED_HEADERS if name in handler.headers}
        record = {
            "method": handler.command,
            "path": handler.req_path,
            "query": handler.req_query,
            "headers": headers,
            "status": status,
            "listener": handler.listener_name,
            "time": time.time(),
        }
        with self._lock:
            self._stats_requests += 1
            self._stats_listeners[handler.listener_name] += 1
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


class HubControl:
    """Client for the control endpoints, for a :class:`HubServer` running in another process.

    It has the same method names as :class:`HubServer`, so benchmarks and the docker demo can drive either.
    Stdlib-only (urllib) on purpose, so it works wherever the server does.
    """

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, action: str, payload: Mapping[str, Any] | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(
            f"{self.url}/_control/{action}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} /_control/{action} failed: {exc.code} {exc.read()!r}") from exc

    def add_model(
        self,
        path: str,
        archive_file: str | os.PathLike[str],
        *,
        uncompressed_location: str | None = None,
        separate_storage: bool = True,
    ) -> str:
        payload = {
            "path": path,
            "archive": str(Path(archive_file).resolve()),
            "uncompressed_location": uncompressed_location,
            "separate_storage": separate_storage,
        }
        return str(self._call("POST", "models", payload)["url"])

    def add_archive(self, name: str, archive_file: str | os.PathLike[str]) -> str:
        payload = {"name": name, "archive": str(Path(archive_file).resolve())}
        return str(self._call("POST", "archives", payload)["url"])

    def set_faults(self, path: str, **faults: Any) -> None:
        self._call("POST", "faults", {"path": path, **faults})

    def clear_faults(self) -> None:
        self._call("POST", "reset", {})

    def set_network(self, *, bandwidth_bytes_per_s: float | None = None, latency_s: float = 0.0) -> None:
        self._call("POST", "network", {"bandwidth_bytes_per_s": bandwidth_bytes_per_s, "latency_s": latency_s})

    def stats(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("GET", "stats"))

    def reset_stats(self) -> None:
        self._call("POST", "reset_stats", {})

    def info(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("GET", "info"))


class HubServerProcess:
    """Run the hub server as a subprocess (``python -m ...hub_server``) and wait for its ``READY`` line.

    For benchmarks with many client processes, where an in-process server would compete for the GIL
    with the code being measured. ``control`` is a :class:`HubControl` for it.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        port: int = 0,
        uncompressed_prefix: str | None = None,
        verbose: bool = False,
        startup_timeout: float = 30.0,
        bandwidth_bytes_per_s: float | None = None,
        latency_s: float = 0.0,
    ) -> None:
        self.root = root
        self.bandwidth_bytes_per_s = bandwidth_bytes_per_s
        self.latency_s = latency_s
        self.port = port
        self.uncompressed_prefix = uncompressed_prefix
        self.verbose = verbose
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> HubServerProcess:
        cmd = [sys.executable, "-m", _MODULE, "--port", str(self.port)]
        if self.root is not None:
            cmd += ["--root", str(self.root)]
        if self.uncompressed_prefix:
            cmd += ["--uncompressed-prefix", self.uncompressed_prefix]
        if self.verbose:
            cmd.append("--verbose")
        if self.bandwidth_bytes_per_s:
            cmd += ["--bandwidth-per-connection", f"{self.bandwidth_bytes_per_s / 1e6:g}"]
        if self.latency_s:
            cmd += ["--latency-ms", f"{self.latency_s * 1e3:g}"]
        env = dict(os.environ)
        # Make the package importable in the child even when it is not installed (running from a checkout).
        package_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
        assert self.process.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.process.stdout, selectors.EVENT_READ)
            while b"\n" not in line:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"hub server did not print READY (got {line!r})")
                if sel.select(timeout=min(remaining, 0.5)):
                    # os.read, not stdout.read: a buffered read would hide data from select().
                    line += os.read(self.process.stdout.fileno(), 4096)
        text = line.decode().splitlines()[0].strip()
        if not text.startswith("READY "):
            self.stop()
            raise RuntimeError(f"unexpected first line from hub server: {text!r}")
        self.url = text.split()[1]
        return self

    @property
    def control(self) -> HubControl:
        return HubControl(self.url)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> HubServerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _write_port_file(path: Path, port: int) -> None:
    """Atomically, so a shell script polling for the file never reads it half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {_MODULE}", description="Fake TF Hub server on 127.0.0.1 (tests, demo, benchmarks)."
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
    """Entry point of ``python -m tfhub_cache.testing.hub_server``; serves until SIGTERM/SIGINT."""
    args = _parse_args(argv)
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
            _write_port_file(args.port_file, server.port)
        print(f"READY {server.url}", flush=True)
        if args.verbose:
            print(f"storage listener {server.storage_url}; models: {server.model_paths()}", file=sys.stderr)
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
