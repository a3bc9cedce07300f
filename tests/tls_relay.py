"""Let stock TensorFlow's ``gs://`` filesystem talk to the GCS emulator on loopback.

TensorFlow compiles in ``https://www.googleapis.com`` and ``storage.googleapis.com`` and has no
emulator variable, but its libcurl honours ``HTTPS_PROXY`` and ``CURL_CA_BUNDLE`` (see
``docs/gcs_emulator.md``, "TensorFlow's own gs:// filesystem"). So: a throwaway CA
(:func:`make_test_ca`) and a loopback CONNECT relay (:class:`TLSRelay`) that accepts tunnels only
to those two hosts, terminates TLS with a leaf certificate for them and pipes the plaintext to
fake-gcs-server. Anything else gets 403, so a misconfigured test cannot reach the internet through
it.

Two fixes on the way through (TF -> emulator): Go's net/http rejects TF's ``Transfer-Encoding:
identity`` on upload initiation, and fake-gcs-server builds the resumable-upload ``Location`` from
the request scheme; that header line is rewritten into ``X-Forwarded-Proto: https``, fixing both.
The rewrite works on raw chunks; on loopback a header block arrives in one read.

Test-only code: it lives in ``tests/`` and imports only the stdlib and ``cryptography``.
"""

from __future__ import annotations

import contextlib
import datetime
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

ALLOWED_HOSTS = frozenset({"www.googleapis.com", "storage.googleapis.com"})
_TE_IDENTITY = b"\r\nTransfer-Encoding: identity\r\n"
_FORWARDED_HTTPS = b"\r\nX-Forwarded-Proto: https\r\n"
_IDLE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RelayCA:
    """Files of a throwaway CA and a leaf certificate for the Google storage hosts."""

    ca_pem: Path
    leaf_pem: Path
    leaf_key: Path


def make_test_ca(directory: Path, hosts: frozenset[str] = ALLOWED_HOSTS) -> RelayCA:
    """Write a CA (valid 2 days) and a leaf for ``hosts`` (names or IP addresses) signed by it into ``directory``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "airflow-provider-tfhub test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sorted(hosts)[0])]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName([_san(h, ipaddress, x509) for h in sorted(hosts)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = RelayCA(directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key")
    files.ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.leaf_pem.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    files.leaf_key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


def _san(host: str, ipaddress: Any, x509: Any) -> Any:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@dataclass
class RelayStats:
    """What went through: tunnels per allowed host, and every refused request line."""

    connects: dict[str, int] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class TLSRelay:
    """A CONNECT proxy on 127.0.0.1 that ends TLS for :data:`ALLOWED_HOSTS` and forwards to ``upstream_port``.

    ::

        with TLSRelay(emulator.port, ca) as relay:
            env = relay.env(ca)   # HTTPS_PROXY, CURL_CA_BUNDLE, GOOGLE_AUTH_TOKEN_FOR_TESTING, ...
    """

    def __init__(self, upstream_port: int, ca: RelayCA, *, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(str(ca.leaf_pem), str(ca.leaf_key))
        self._server: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._sockets_lock = threading.Lock()
        self._stopping = threading.Event()
        self.stats = RelayStats()
        self.port = 0

    def start(self) -> TLSRelay:
        self._server = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = int(self._server.getsockname()[1])
        threading.Thread(target=self._accept_loop, name="tls-relay-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.close()
        with self._sockets_lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> TLSRelay:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def env(self, ca: RelayCA) -> dict[str, str]:
        """Environment for the TensorFlow process: every gs:// request goes through this relay."""
        proxy = f"http://127.0.0.1:{self.port}"
        return {
            "HTTPS_PROXY": proxy,
            "https_proxy": proxy,
            "HTTP_PROXY": proxy,  # a stray plain-http URL reaches the relay (403), never the network
            "http_proxy": proxy,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": str(ca.ca_pem),
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token",  # TF asks no oauth or metadata server
            "NO_GCE_CHECK": "true",
            "GCS_STAT_CACHE_MAX_AGE": "0",
        }

    # -- internals ------------------------------------------------------------------------------------

    def _track(self, sock: socket.socket) -> None:
        with self._sockets_lock:
            self._sockets.add(sock)

    def _untrack_close(self, *socks: socket.socket) -> None:
        for sock in socks:
            with self._sockets_lock:
                self._sockets.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._handle, args=(client,), name="tls-relay-conn", daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        tls: ssl.SSLSocket | None = None
        try:
            client.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk or len(head) > 65536:
                    return
                head += chunk
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            host = parts[1].rsplit(":", 1)[0] if len(parts) >= 2 else ""
            if parts[0] != "CONNECT" or host not in ALLOWED_HOSTS:
                with self.stats.lock:
                    self.stats.refused.append(request_line)
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            with self.stats.lock:
                self.stats.connects[host] = self.stats.connects.get(host, 0) + 1
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            tls = self._context.wrap_socket(client, server_side=True)
            self._track(tls)
            upstream = socket.create_connection(self.upstream, timeout=30)
            self._track(upstream)
            self._pump(tls, upstream)
        except (OSError, ssl.SSLError):
            return
        finally:
            self._untrack_close(*(s for s in (upstream, tls, client) if s is not None))

    @staticmethod
    def _pump(tls: ssl.SSLSocket, upstream: socket.socket) -> None:
        """Copy both ways until either side closes; TLS-buffered bytes are drained via ``pending()``."""
        tls.setblocking(True)
        upstream.setblocking(True)
        while True:
            readable, _, _ = select.select([tls, upstream], [], [], _IDLE_TIMEOUT_S)
            if not readable:
                return
            for sock in readable:
                if sock is tls:
                    try:
                        data = tls.recv(65536)
                    except ssl.SSLWantReadError:
                        continue
                    while data and tls.pending():
                        data += tls.recv(65536)
                    if not data:
                        return
                    upstream.sendall(data.replace(_TE_IDENTITY, _FORWARDED_HTTPS))
                else:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    tls.sendall(data)


@dataclass
class TFGCS:
    """A running emulator plus relay: ``env`` is what a TensorFlow subprocess needs for ``gs://``."""

    emulator: Any
    relay: TLSRelay
    env: dict[str, str]

    def upload_tree(self, local_dir: Path, gs_url: str) -> int:
        """Upload every file under ``local_dir`` to ``gs://bucket/prefix`` (bucket created); return the count."""
        bucket_name, _, prefix = gs_url.removeprefix("gs://").partition("/")
        self.emulator.create_bucket(bucket_name)
        bucket = self.emulator.client().bucket(bucket_name)
        count = 0
        for path in sorted(local_dir.rglob("*")):
            if path.is_file():
                name = f"{prefix.strip('/')}/{path.relative_to(local_dir).as_posix()}".lstrip("/")
                bucket.blob(name).upload_from_filename(str(path))
                count += 1
        return count


@contextlib.contextmanager
def tf_gcs(workdir: Path) -> Iterator[TFGCS]:
    """fake-gcs-server + a throwaway CA + :class:`TLSRelay`, torn down on exit.

    fake-gcs-server keeps its default ``-public-host storage.googleapis.com``, which is what routes
    TensorFlow's path-style media GETs (``Host: storage.googleapis.com``) correctly.
    """
    from tfhub_cache.testing.gcs_emulator import GCSEmulator

    ca = make_test_ca(workdir / "ca")
    with GCSEmulator() as emulator, TLSRelay(emulator.port, ca) as relay:
        yield TFGCS(emulator, relay, relay.env(ca))
