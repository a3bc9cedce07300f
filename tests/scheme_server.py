"""A loopback server that speaks https *and* plain http on one port, to test where tokens go.

The token rule (``core/token_scope.py``) must tell apart URLs that differ only in scheme (an
https->http redirect on the same host and port), only in host (same port), or only in port. One
listener per ``host:port`` that sniffs the first byte of each connection (``0x16``: a TLS
ClientHello) gives exactly those neighbours on loopback: ``https://127.0.0.1:P`` and
``http://127.0.0.1:P`` are the same socket, ``127.0.0.2:P`` is another host on the same port.

Routes are shared by every server of a :class:`SchemeServers` group: a path either redirects
(``302 Location``) or serves an archive with an ETag (:func:`etag_of`), ``Range: bytes=0-0`` (206) and
``If-None-Match`` (304), i.e. what staging and the update probes ask for. Every request is recorded
with the scheme and ``host:port`` it arrived on and its ``Authorization`` header.

Test-only code: stdlib plus ``tls_relay.make_test_ca`` (``cryptography``).
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tls_relay import RelayCA, make_test_ca


def etag_of(file: Path) -> str:
    """The archive's ETag: its directory and file name (the test models are ``<name>/model.tar.gz``)."""
    return f'"{file.parent.name}-{file.name}"'


@dataclass
class Routes:
    """``redirects[path] = location`` and ``archives[path] = file``, shared by a group of servers."""

    redirects: dict[str, str] = field(default_factory=dict)
    archives: dict[str, Path] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _DualServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        routes = self.server.routes
        path = self.path.split("?", 1)[0]
        scheme = "https" if isinstance(self.connection, ssl.SSLSocket) else "http"
        with routes.lock:
            routes.records.append(
                {
                    "url": f"{scheme}://{self.server.netloc}{path}",
                    "authorization": self.headers.get("Authorization"),
                }
            )
        if path in routes.redirects:
            self._send(302, b"", {"Location": routes.redirects[path]})
        elif path in routes.archives:
            self._archive(routes.archives[path])
        else:
            self._send(404, b"not found\n", {"Content-Type": "text/plain"})

    def _archive(self, file: Path) -> None:
        etag = etag_of(file)
        if self.headers.get("If-None-Match") == etag:
            self._send(304, None, {"ETag": etag})
            return
        data = file.read_bytes()
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "application/x-tar"}
        if self.headers.get("Range") == "bytes=0-0":
            self._send(206, data[:1], {**headers, "Content-Range": f"bytes 0-0/{len(data)}"})
        else:
            self._send(200, data, headers)

    def _send(self, status: int, body: bytes | None, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            try:
                self.wfile.write(body)
            except OSError:
                pass  # a probe closes after the headers


class _DualServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, routes: Routes, context: ssl.SSLContext) -> None:
        self.routes = routes
        self.context = context
        super().__init__((host, port), _Handler)
        self.netloc = f"{host}:{self.server_address[1]}"

    def finish_request(self, request: Any, client_address: Any) -> None:
        sock: socket.socket = request
        sock.settimeout(30)
        try:
            first = sock.recv(1, socket.MSG_PEEK)
            if first == b"\x16":
                request = self.context.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError):
            return  # a client that rejected our certificate, or went away
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class SchemeServers:
    """``127.0.0.1:P``, ``127.0.0.2:P`` (same port, another host) and ``127.0.0.1:Q`` (another port),
    each answering both https and http, with one shared :class:`Routes`.

    ``env()`` returns the variables that make ``requests`` and ``httpx`` trust the test CA.
    """

    def __init__(self, directory: Path) -> None:
        self.ca: RelayCA = make_test_ca(directory, frozenset({"127.0.0.1", "127.0.0.2"}))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.ca.leaf_pem), str(self.ca.leaf_key))
        self.routes = Routes()
        self.main = _DualServer("127.0.0.1", 0, self.routes, context)
        self.port = self.main.server_address[1]
        self.other_host = _DualServer("127.0.0.2", self.port, self.routes, context)
        self.other_port = _DualServer("127.0.0.1", 0, self.routes, context)
        self._servers = [self.main, self.other_host, self.other_port]
        for server in self._servers:
            threading.Thread(target=server.serve_forever, name=f"scheme-{server.netloc}", daemon=True).start()

    def env(self) -> dict[str, str]:
        return {"REQUESTS_CA_BUNDLE": str(self.ca.ca_pem), "SSL_CERT_FILE": str(self.ca.ca_pem)}

    def authorization_by_url(self) -> dict[str, str | None]:
        """``url -> Authorization`` of every request so far (one request per URL in these tests)."""
        with self.routes.lock:
            return {r["url"]: r["authorization"] for r in self.routes.records}

    def reset(self) -> None:
        with self.routes.lock:
            self.routes.records.clear()

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
