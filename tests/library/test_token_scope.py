"""Where the bearer token goes, on every HTTP path: sync staging, the sync probe (poke) and the
async probe of the deferrable sensors' trigger, hop by hop through real redirects.

The handle is ``https://127.0.0.1:P/...``; its first hop redirects to a neighbour that differs in
exactly one part (see ``scheme_server.py``), which then serves the archive. The token must reach
the handle's own URL and never the neighbour, except over an upgrade to https on the same
``host:port`` (from an http handle). Staging from the loopback hub (a retry included) sends it to
the hub's host only and records it nowhere: logs, output, the result, errors, cache files.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scheme_server import SchemeServers, etag_of
from stage_helpers import FAST, MEDIUM

from airflow_provider_tfhub.triggers.tfhub import TFHubModelUpdatedTrigger
from tfhub_cache.cache.staging import stage
from tfhub_cache.errors import DownloadError
from tfhub_cache.fetch.token_scope import TokenScope, auth_headers
from tfhub_cache.fetch.update_check import check_for_update

TOKEN = "tok-3f9a-never-leak"
BEARER = f"Bearer {TOKEN}"

#: neighbour name -> (scheme of the handle, where the first hop redirects to, token expected there)
HOPS = {
    "https->http same host and port": ("https", "http://127.0.0.1:{P}", False),
    "https other host, same port": ("https", "https://127.0.0.2:{P}", False),
    "https same host, other port": ("https", "https://127.0.0.1:{Q}", False),
    "http other host, same port": ("http", "http://127.0.0.2:{P}", False),
    "http->https same host and port": ("http", "https://127.0.0.1:{P}", True),
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchemeServers]:
    group = SchemeServers(tmp_path_factory.mktemp("scheme-ca"))
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
def tls_env(servers: SchemeServers, monkeypatch: pytest.MonkeyPatch) -> SchemeServers:
    for name, value in servers.env().items():
        monkeypatch.setenv(name, value)
    servers.reset()
    return servers


def route(servers: SchemeServers, archive: Path, case: str, name: str) -> tuple[str, str]:
    """Register handle -> (302) neighbour -> archive; return (handle, neighbour archive URL)."""
    scheme, target, _ = HOPS[case]
    handle = f"{scheme}://127.0.0.1:{servers.port}/pub/{name}/1"
    base = target.format(P=servers.port, Q=servers.other_port.server_address[1])
    servers.routes.redirects[f"/pub/{name}/1"] = f"{base}/blobs/{name}.tar.gz?X-Goog-Signature=abc"
    servers.routes.archives[f"/blobs/{name}.tar.gz"] = archive
    return handle, f"{base}/blobs/{name}.tar.gz"


def assert_token_only_in_scope(servers: SchemeServers, handle: str, hop: str, expected_at_hop: bool) -> None:
    seen = servers.authorization_by_url()
    assert seen.get(handle) == BEARER, seen  # the handle's own URL gets it
    assert hop in seen, seen
    assert seen[hop] == (BEARER if expected_at_hop else None), seen


def test_rule_itself() -> None:
    scope = TokenScope.for_url("https://hub.example:8443/a/b/1")
    assert scope.allows("https://HUB.example:8443/other")
    assert not scope.allows("http://hub.example:8443/a/b/1")  # https -> http, same host and port
    assert not scope.allows("https://hub.example/a/b/1")  # another port
    assert not scope.allows("https://cdn.hub.example:8443/a")  # another host
    assert TokenScope.for_url("http://hub.example/x").allows("https://hub.example/x")  # an upgrade
    assert auth_headers(scope, "http://hub.example:8443/a", TOKEN) == {}
    assert auth_headers(scope, "https://hub.example:8443/a", None) == {}


@pytest.mark.parametrize("case", list(HOPS))
def test_sync_staging_sends_the_token_only_in_scope(
    case: str, tls_env: SchemeServers, model_archives: dict[str, Path], tmp_path: Path
) -> None:
    handle, hop = route(tls_env, model_archives["demo_v1"], case, f"stage{list(HOPS).index(case)}")

    staged = stage(handle, str(tmp_path / "cache"), token=TOKEN)

    assert staged["downloaded"] is True and staged["etag"] == etag_of(model_archives["demo_v1"])
    assert_token_only_in_scope(tls_env, handle, hop, HOPS[case][2])
    assert TOKEN not in json.dumps(staged)
    assert staged["source_url"] is not None and "Signature" not in staged["source_url"]


@pytest.mark.parametrize("case", list(HOPS))
def test_sync_probe_sends_the_token_only_in_scope(
    case: str, tls_env: SchemeServers, model_archives: dict[str, Path]
) -> None:
    handle, hop = route(tls_env, model_archives["demo_v1"], case, f"poke{list(HOPS).index(case)}")

    check = check_for_update(handle, {"etag": '"v0"'}, token=TOKEN)

    assert check.changed and check.etag == etag_of(model_archives["demo_v1"])
    assert_token_only_in_scope(tls_env, handle, hop, HOPS[case][2])


@pytest.mark.parametrize("case", list(HOPS))
async def test_async_trigger_probe_sends_the_token_only_in_scope(
    case: str,
    tls_env: SchemeServers,
    model_archives: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handle, hop = route(tls_env, model_archives["demo_v1"], case, f"trigger{list(HOPS).index(case)}")
    cache_dir = str(tmp_path / "cache")
    stage(handle, cache_dir)  # no token: only the trigger's requests are judged
    tls_env.routes.archives[f"/blobs/trigger{list(HOPS).index(case)}.tar.gz"] = model_archives["demo_v2"]
    tls_env.reset()
    monkeypatch.setenv("AIRFLOW_CONN_TFHUB_DEFAULT", json.dumps({"conn_type": "tfhub", "password": TOKEN}))

    trigger = TFHubModelUpdatedTrigger(handle=handle, cache_dir=cache_dir, poll_interval=0.05)
    event = (await asyncio.wait_for(trigger.run().__anext__(), timeout=60)).payload

    assert event["status"] == "success" and event["reason"].startswith("ETag changed"), event
    assert_token_only_in_scope(tls_env, handle, hop, HOPS[case][2])
    assert TOKEN not in json.dumps(event)


# -- staging through the loopback hub: the token reaches the hub host only, and is never recorded ---------


def test_token_goes_only_to_the_hub_host_and_is_never_recorded(
    hub: Any,
    handle_of: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    hub.set_faults(MEDIUM, fail_times=1, fail_status=503)  # a retry, so retry logs are covered too
    cache = tmp_path / "cache"
    with caplog.at_level(logging.DEBUG):
        result = stage(handle_of("medium"), str(cache), token=TOKEN, retry=FAST)
        with pytest.raises(DownloadError) as missing:
            stage(f"{hub.url}/google/absent/1", str(cache), token=TOKEN, retry=FAST)
    records = hub.stats()["recent"]
    main = [r for r in records if r["listener"] == "main"]
    storage = [r for r in records if r["listener"] == "storage"]
    assert main and storage
    assert all(r["headers"].get("Authorization") == f"Bearer {TOKEN}" for r in main)
    assert all("Authorization" not in r["headers"] for r in storage)  # the redirect target is another origin
    captured = capfd.readouterr()
    for text in (caplog.text, captured.out, captured.err, json.dumps(result), str(missing.value)):
        assert TOKEN not in text
    for path in cache.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
