"""The hub's listening sockets and its request handler: routing, archive responses, control endpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import io
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol, cast
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from tfhub_cache.testing.hub.faults import ResponsePlan
from tfhub_cache.testing.hub.protocol import (
    Unsatisfiable,
    content_type,
    etag_list,
    http_date,
    model_page,
    parse_http_date,
    parse_range,
    weak_equal,
)
from tfhub_cache.testing.hub.registry import Archive, Model

CHUNK_SIZE = 1 << 20
"""Body chunk size: big enough for >1 GB/s on loopback, small enough to cut/stall/throttle precisely."""

RECORDED_HEADERS = ("Range", "If-None-Match", "If-Modified-Since", "If-Range", "Authorization")
"""Request headers copied into request records: the ones whose presence tests assert on."""


class Hub(Protocol):
    """What the request handler needs from the hub that owns its listener (:class:`HubServer` is one).

    Written out here so that the handler does not import the server that imports it.
    """

    verbose: bool
    latency_s: float
    bandwidth_bytes_per_s: float | None

    @property
    def url(self) -> str: ...

    @property
    def storage_url(self) -> str: ...

    def find_model(self, path: str) -> Model | None: ...

    def find_model_by_storage_path(self, storage_path: str) -> Model | None: ...

    def find_archive(self, name: str) -> Archive | None: ...

    def model_paths(self) -> list[str]: ...

    def validators_of(self, archive: Archive) -> tuple[int, str, int]: ...

    def plan_response(self, key: str, *, hop: str) -> ResponsePlan: ...

    def count(self, key: str | None, counter: str, amount: int = 1) -> None: ...

    def record_request(self, record: dict[str, Any]) -> None: ...

    # the control endpoints
    def add_model(
        self,
        path: str,
        archive_file: str | os.PathLike[str],
        *,
        uncompressed_location: str | None = None,
        separate_storage: bool = True,
    ) -> str: ...

    def add_archive(self, name: str, archive_file: str | os.PathLike[str]) -> str: ...

    def set_faults(self, path: str, **faults: Any) -> None: ...

    def clear_faults(self, path: str | None = None) -> None: ...

    def set_network(self, *, bandwidth_bytes_per_s: float | None = None, latency_s: float = 0.0) -> None: ...

    def reset_stats(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def info(self) -> dict[str, Any]: ...


class Listener(http.server.ThreadingHTTPServer):
    """One listening socket of a :class:`HubServer`; remembers open connections so ``stop()`` can cut them."""

    daemon_threads = True
    request_queue_size = 128  # 8+ clients connecting at once must not hit SYN retries (1 s each)
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], hub: Hub, name: str) -> None:
        self.hub = hub
        self.name = name
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, RequestHandler)

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


class RequestHandler(http.server.BaseHTTPRequestHandler):
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
    def hub(self) -> Hub:
        return cast(Listener, self.server).hub

    @property
    def listener_name(self) -> str:
        return cast(Listener, self.server).name

    def request_record(self, status: int) -> dict[str, Any]:
        """What ``HubServer.stats()["recent"]`` keeps of this request: the fields tests assert on."""
        headers = {name: self.headers[name] for name in RECORDED_HEADERS if name in self.headers}
        return {
            "method": self.command,
            "path": self.req_path,
            "query": self.req_query,
            "headers": headers,
            "status": status,
            "listener": self.listener_name,
            "time": time.time(),
        }

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
            self.hub.record_request(self.request_record(code))
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
        self.hub.count(None, "not_found")
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
            model = self.hub.find_model_by_storage_path(path)
            if model is None:
                self._not_found()
            else:
                self._serve_archive(model.path, model.archive)
        elif path.startswith("/archives/"):
            archive = self.hub.find_archive(path.removeprefix("/archives/"))
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
        model = self.hub.find_model(path)
        if model is None:
            self._not_found()
            return
        fmt = self._format()
        if fmt is None:
            self.hub.count(model.path, "page")
            self._send_bytes(200, model_page(model.path), "text/html; charset=utf-8")
        elif fmt == "compressed":
            self.hub.count(model.path, "compressed")
            plan = self.hub.plan_response(model.path, hop="compressed")
            if plan.fail:
                self._fail(model.path, plan)
                return
            location = self.hub.url + "/kaggle-redirect" + quote(model.path) + "?tf-hub-format=compressed"
            self._redirect(302, location)
        elif fmt == "uncompressed":
            self.hub.count(model.path, "uncompressed")
            if model.uncompressed_location is None:
                self._send_bytes(404, f"no uncompressed location for {model.path}\n".encode())
            else:
                # tensorflow_hub requires exactly this: 303 and the gs:// path as the body. No Location
                # header, or urllib would follow it instead of raising HTTPError(303) with the body.
                self._send_bytes(303, model.uncompressed_location.encode())
        else:
            self._send_bytes(400, f"unknown tf-hub-format {fmt!r}\n".encode())

    def _kaggle_hop(self, path: str) -> None:
        model = self.hub.find_model(path)
        if model is None:
            self._not_found()
            return
        self.hub.count(model.path, "redirect")
        base = self.hub.storage_url if model.separate_storage else self.hub.url
        self._redirect(302, base + quote(model.storage_path))

    def _index(self) -> None:
        items = "".join(f'<li><a href="{quote(p)}">{p}</a></li>' for p in self.hub.model_paths())
        body = f"<!DOCTYPE html><html><body><h1>Fake TF Hub</h1><ul>{items}</ul></body></html>\n"
        self._send_bytes(200, body.encode(), "text/html; charset=utf-8")

    def _fail(self, key: str, plan: ResponsePlan) -> None:
        self.hub.count(key, "faulted")
        headers = {}
        if plan.retry_after is not None:
            headers["Retry-After"] = f"{plan.retry_after:g}"
        self._send_bytes(plan.fail_status, f"injected failure {plan.fail_status}\n".encode(), headers=headers)

    # -- archives -----------------------------------------------------------------------------------

    def _serve_archive(self, key: str, archive: Archive) -> None:
        plan = self.hub.plan_response(key, hop="archive")
        if plan.delay_s > 0:
            time.sleep(plan.delay_s)
        if plan.fail:
            self._fail(key, plan)
            return
        if plan.html:
            self.hub.count(key, "faulted")
            self._send_bytes(200, model_page(key), "text/html; charset=utf-8")
            return
        try:
            size, etag, last_modified = self.hub.validators_of(archive)
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
        archive: Archive,
        handle: io.BufferedReader,
        size: int,
        etag: str,
        last_modified: int,
        plan: ResponsePlan,
    ) -> None:
        headers = {"ETag": etag, "Last-Modified": http_date(last_modified)}
        if not plan.no_range:
            headers["Accept-Ranges"] = "bytes"

        if self._not_modified(etag, last_modified):
            self.hub.count(key, "not_modified")
            self.send_response(304)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            return

        byte_range: tuple[int, int] | None = None
        range_header = self.headers.get("Range")
        if range_header and not (plan.no_range or plan.range_ignored) and self._if_range_ok(etag, last_modified):
            try:
                byte_range = parse_range(range_header, size)
            except Unsatisfiable:
                self._send_bytes(416, b"range not satisfiable\n", headers={"Content-Range": f"bytes */{size}"})
                return

        if byte_range is None:
            start, length, status = 0, size, 200
        else:
            start, length, status = byte_range[0], byte_range[1] - byte_range[0] + 1, 206
            headers["Content-Range"] = f"bytes {byte_range[0]}-{byte_range[1]}/{size}"
        if self.command == "HEAD":
            self.hub.count(key, "head")
        else:
            self.hub.count(key, "archive_full" if status == 200 else "archive_range")

        self.send_response(status)
        self.send_header("Content-Type", content_type(archive.file.name))
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
            self.hub.count(key, "bytes_sent", sent)

    def _not_modified(self, etag: str, last_modified: int) -> bool:
        inm = self.headers.get("If-None-Match")
        if inm is not None:  # RFC 9110: If-None-Match takes precedence over If-Modified-Since
            tags = etag_list(inm)
            return "*" in tags or any(weak_equal(tag, etag) for tag in tags)
        ims = self.headers.get("If-Modified-Since")
        if ims is not None:
            since = parse_http_date(ims)
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
        return parse_http_date(value) == last_modified

    def _stream(self, handle: io.BufferedReader, start: int, length: int, plan: ResponsePlan) -> int:
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
