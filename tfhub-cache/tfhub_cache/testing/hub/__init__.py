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

Run as a subprocess: ``python -m tfhub_cache.testing.hub --root DIR [--port N]
[--port-file F] [--bandwidth-per-connection MBPS] [--latency-ms MS]``; it prints ``READY <url>``
once listening and stops cleanly on SIGTERM/SIGINT.

WAN model: loopback hides what users wait for, so the server can model a real network, for every
route but ``/_control``: ``latency_s`` is slept before each response (a round trip to a far
server), and ``bandwidth_bytes_per_s`` caps the body rate of each connection (one TCP stream to a
CDN or object store rarely gets more than tens of MB/s, whatever the link). Several connections
each get the cap, which is what makes parallel ranged downloads pay off on real networks.

The package imports only the stdlib (no TensorFlow) so that starting it costs milliseconds. Its modules:
``registry`` (what is served), ``faults`` (what goes wrong on purpose), ``protocol`` (ranges, validators,
dates), ``handler`` (listeners and the request handler), ``server`` (:class:`HubServer`), ``control``
(:class:`HubControl`), ``process`` (:class:`HubServerProcess`) and ``cli`` (``python -m``).
"""

from tfhub_cache.testing.hub.cli import main
from tfhub_cache.testing.hub.control import HubControl
from tfhub_cache.testing.hub.faults import Faults
from tfhub_cache.testing.hub.process import HubServerProcess
from tfhub_cache.testing.hub.registry import ARCHIVE_SUFFIXES
from tfhub_cache.testing.hub.server import HubServer

__all__ = [
    "ARCHIVE_SUFFIXES",
    "Faults",
    "HubControl",
    "HubServer",
    "HubServerProcess",
    "main",
]
