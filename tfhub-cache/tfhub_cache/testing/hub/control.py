"""A client of the hub's control endpoints, for a hub that runs in another process."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast


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
