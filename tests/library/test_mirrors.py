"""Issue 13: mirrors. A real-looking tfhub.dev handle is fetched from a mirror on 127.0.0.1 and then
found by ``hub.load`` with no network; the cache key, descriptor, ``handle`` and metadata stay the
handle's, the token goes to the mirror's host, and every path (stage, CLI, UNCOMPRESSED, the sync and
async update probes) goes through the mirror.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from stage_helpers import run_py

from tfhub_cache.cache.staging import stage
from tfhub_cache.errors import ConfigurationError
from tfhub_cache.fetch.mirrors import mirror_url, parse_mirrors, resolve_mirrors, rewrite
from tfhub_cache.fetch.update_check import acheck_for_update, check_for_update
from tfhub_cache.handles import cache_key
from tfhub_cache.testing.hub import HubServer

HANDLE = "https://tfhub.dev/google/x/1"
TOKEN = "s3cr3t-mirror-token"


# -- the rule ---------------------------------------------------------------------------------------
def test_longest_prefix_wins_at_a_path_boundary() -> None:
    mapping = {"https://tfhub.dev": "https://m.corp/tfhub", "https://tfhub.dev/google": "https://g.corp/g"}
    assert rewrite("https://tfhub.dev/google/x/1", mapping) == "https://g.corp/g/x/1"
    assert rewrite("https://tfhub.dev/other/x/1", mapping) == "https://m.corp/tfhub/other/x/1"
    assert rewrite("https://TFHUB.dev/other/x/1", mapping) == "https://m.corp/tfhub/other/x/1"
    assert mirror_url("https://tfhub.dev.evil.com/a/b/1", mapping) is None  # not at a boundary
    assert mirror_url("https://tfhub.dev/googlex/a/1", mapping) == "https://m.corp/tfhub/googlex/a/1"
    assert rewrite("https://www.kaggle.com/models/a/b/c/d/1", mapping) == "https://www.kaggle.com/models/a/b/c/d/1"
    # a trailing slash in the mapping means the same prefix
    assert rewrite(HANDLE, {"https://tfhub.dev/": "https://m.corp/tfhub/"}) == "https://m.corp/tfhub/google/x/1"


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("{not json", "is not valid JSON"),
        ('["https://tfhub.dev"]', "must be a JSON object"),
        ('{"tfhub.dev": "https://m.corp"}', "prefix 'tfhub.dev'"),
        ('{"https://tfhub.dev": "ftp://m.corp"}', "mirror 'ftp://m.corp'"),
        ('{"https://tfhub.dev": 1}', "must map a string to a string"),
    ],
)
def test_bad_mapping_names_the_setting(monkeypatch: pytest.MonkeyPatch, value: str, needle: str) -> None:
    monkeypatch.setenv("TFHUB_MIRRORS", value)
    with pytest.raises(ConfigurationError, match="TFHUB_MIRRORS") as exc:
        resolve_mirrors()
    assert needle in str(exc.value) and "e.g." in str(exc.value)
    with pytest.raises(ConfigurationError, match=r"\[tfhub\] mirrors"):
        parse_mirrors(value, setting="[tfhub] mirrors")


def test_precedence_argument_connection_environment_config(monkeypatch: pytest.MonkeyPatch) -> None:
    def m(name: str) -> dict[str, str]:
        return {"https://tfhub.dev": f"https://{name}.corp"}

    monkeypatch.delenv("TFHUB_MIRRORS", raising=False)
    assert resolve_mirrors() == {}
    assert resolve_mirrors(None, None, json.dumps(m("config"))) == m("config")
    monkeypatch.setenv("TFHUB_MIRRORS", json.dumps(m("env")))
    assert resolve_mirrors(None, None, json.dumps(m("config"))) == m("env")
    assert resolve_mirrors(None, json.dumps(m("conn")), json.dumps(m("config"))) == m("conn")
    assert resolve_mirrors(m("arg"), json.dumps(m("conn")), json.dumps(m("config"))) == m("arg")


def test_hook_reads_connection_extra_and_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_tfhub.hooks.tfhub import TFHubHook

    monkeypatch.delenv("TFHUB_MIRRORS", raising=False)
    monkeypatch.setenv("AIRFLOW__TFHUB__MIRRORS", '{"https://tfhub.dev": "https://config.corp"}')
    assert TFHubHook(tfhub_conn_id="tfhub_default").resolve_mirrors() == {"https://tfhub.dev": "https://config.corp"}
    conn = {"conn_type": "tfhub", "extra": {"mirrors": {"https://tfhub.dev": "https://conn.corp"}}}
    monkeypatch.setenv("AIRFLOW_CONN_TFHUB_MIRRORED", json.dumps(conn))
    hook = TFHubHook(tfhub_conn_id="tfhub_mirrored")
    assert hook.resolve_mirrors() == {"https://tfhub.dev": "https://conn.corp"}
    assert hook.resolve_mirrors({"https://tfhub.dev": "https://arg.corp"}) == {"https://tfhub.dev": "https://arg.corp"}


# -- staging through a mirror ----------------------------------------------------------------------
def test_stage_through_mirror_then_hub_load_offline(mirror: HubServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    staged = stage(HANDLE, str(cache), mirrors={"https://tfhub.dev": mirror.url}, token=TOKEN)
    key = cache_key(HANDLE)
    assert staged["handle"] == HANDLE and staged["cache_key"] == key and staged["revision"] is not None
    assert staged["path"] == str(cache / f"{key}.revisions" / staged["revision"])
    assert staged["downloaded"] is True
    assert staged["source_url"] == f"{mirror.storage_url}/storage/google/x/1.tar.gz"  # what served the bytes
    meta = json.loads((cache / f"{key}.meta.json").read_text())
    assert meta["handle"] == HANDLE and meta["mirror"] == f"{mirror.url}/google/x/1"
    assert (cache / f"{key}.descriptor.txt").read_text().startswith(f"Module: {HANDLE}\n")
    # The token went to the mirror's host (it replaces tfhub.dev in the token rule), not to storage.
    records = mirror.records()
    main = [r for r in records if r["listener"] == "main"]
    assert main and all(r["headers"].get("Authorization") == f"Bearer {TOKEN}" for r in main)
    assert all("Authorization" not in r["headers"] for r in records if r["listener"] == "storage")
    assert TOKEN not in (cache / f"{key}.meta.json").read_text()

    mirror.stop()  # no hub at all now, and any attempt to reach tfhub.dev goes to a dead proxy
    out = run_py(
        f"""
        import json, tensorflow as tf, tensorflow_hub as hub
        m = hub.load({HANDLE!r})
        y = m.signatures["serving_default"](x=tf.zeros([1, 3]))["y"].numpy().tolist()
        print(json.dumps({{"path": hub.resolve({HANDLE!r}), "y": y}}))
        """,
        env={"TFHUB_CACHE_DIR": str(cache), "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"},
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"path": str(cache / key), "y": [[1.0, 1.0, 1.0]]}  # tensorflow_hub's view of our revision


def test_longest_prefix_is_the_one_fetched(mirror: HubServer, tmp_path: Path) -> None:
    mapping = {"https://tfhub.dev": "http://127.0.0.1:9/dead", "https://tfhub.dev/google": f"{mirror.url}/google"}
    staged = stage(HANDLE, str(tmp_path / "c"), mirrors=mapping)
    assert staged["downloaded"] is True and staged["handle"] == HANDLE


def test_cli_honours_tfhub_mirrors(
    mirror: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tfhub_cache.cli import main

    monkeypatch.setenv("TFHUB_MIRRORS", json.dumps({"https://tfhub.dev": mirror.url}))
    assert main(["stage", HANDLE, "--cache-dir", str(tmp_path / "c"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["handle"] == HANDLE and result["cache_key"] == cache_key(HANDLE) and result["downloaded"] is True
    assert mirror.stats()["models"]["/google/x/1"]["archive_full"] == 1

    monkeypatch.setenv("TFHUB_MIRRORS", "{oops")
    assert main(["stage", HANDLE, "--cache-dir", str(tmp_path / "c2")]) == 1
    assert "Environment variable `TFHUB_MIRRORS` is not valid JSON" in capsys.readouterr().err


def test_uncompressed_resolves_through_the_mirror(mirror: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFHUB_MIRRORS", json.dumps({"https://tfhub.dev": mirror.url}))
    result = stage(HANDLE, load_format="UNCOMPRESSED")
    assert result["path"] == "gs://mirror-b/google/x/1" and result["handle"] == HANDLE
    assert mirror.stats()["models"]["/google/x/1"]["uncompressed"] == 1


async def test_update_probes_go_through_the_mirror(mirror: HubServer, tmp_path: Path) -> None:
    mapping = {"https://tfhub.dev": mirror.url}
    staged = stage(HANDLE, str(tmp_path / "c"), mirrors=mapping)
    mirror.reset_stats()
    sync = check_for_update(HANDLE, staged, mirrors=mapping, token=TOKEN)
    assert sync.changed is False
    async_ = await acheck_for_update(HANDLE, staged, mirrors=mapping, token=TOKEN)
    assert async_.changed is False, async_.reason
    main = [r for r in mirror.records() if r["listener"] == "main"]
    assert len([r for r in main if r["path"] == "/google/x/1"]) == 2  # one first hop per probe, at the mirror
    assert all(r["headers"].get("Authorization") == f"Bearer {TOKEN}" for r in main)


def test_stage_operator_passes_mirrors(mirror: HubServer, tmp_path: Path) -> None:
    from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator

    with pytest.raises(ConfigurationError, match="mirrors argument"):
        TFHubStageModelOperator(task_id="bad", handle=HANDLE, mirrors="{oops")
    op = TFHubStageModelOperator(
        task_id="stage", handle=HANDLE, cache_dir=str(tmp_path / "c"), mirrors={"https://tfhub.dev": mirror.url}
    )
    staged = op.execute({})
    assert staged["handle"] == HANDLE and staged["downloaded"] is True
    assert os.path.isfile(os.path.join(staged["path"], "saved_model.pb"))
