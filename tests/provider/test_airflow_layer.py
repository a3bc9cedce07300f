"""The Airflow layer of issue 2: provider registration, hook settings, the stage operator, the example DAG."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException
from airflow_utils import get_dag, xcom

from airflow_provider_tfhub.hooks.tfhub import TFHubHook
from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator
from tfhub_cache.errors import ConfigurationError, InvalidHandleError


def test_provider_is_registered_with_config() -> None:
    env = {**os.environ, "AIRFLOW__TFHUB__LOCK_TIMEOUT": "123"}
    listed = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list"], env=env, capture_output=True, text=True, timeout=120
    )
    assert "airflow-provider-tfhub" in listed.stdout, listed.stderr[-2000:]
    value = subprocess.run(
        [sys.executable, "-m", "airflow", "config", "get-value", "tfhub", "lock_timeout"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert value.stdout.strip() == "123"
    from airflow_provider_tfhub.get_provider_info import get_provider_info

    info = get_provider_info()
    conn = info["connection-types"][0]
    assert conn["connection-type"] == "tfhub" and set(conn["conn-fields"]) >= {"cache_dir", "load_format"}
    assert conn["ui-field-behaviour"]["relabeling"]["password"] == "Token"  # the one token field
    assert set(info["config"]["tfhub"]["options"]) == {
        "cache_dir",
        "load_format",
        "lock_timeout",
        "mirrors",
        "upstream_cache",
    }


def test_hook_without_connection_uses_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_TFHUB_DEFAULT", raising=False)
    monkeypatch.setenv("TFHUB_CACHE_DIR", "/from/env")
    hook = TFHubHook()
    assert hook.resolve_cache_dir() == "/from/env"
    assert hook.resolve_cache_dir("/explicit") == "/explicit"
    assert hook.get_token() is None
    with pytest.raises(AirflowNotFoundException):
        TFHubHook("no_such_conn").resolve_cache_dir()


def test_hook_precedence_connection_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__TFHUB__CACHE_DIR", "/from/config")
    monkeypatch.setenv("AIRFLOW__TFHUB__LOAD_FORMAT", "UNCOMPRESSED")
    monkeypatch.delenv("TFHUB_CACHE_DIR", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_TFHUB_DEFAULT", raising=False)
    assert TFHubHook().resolve_cache_dir() == "/from/config"
    assert TFHubHook().resolve_load_format() == "UNCOMPRESSED"
    monkeypatch.setenv("TFHUB_CACHE_DIR", "/from/env")
    assert TFHubHook().resolve_cache_dir() == "/from/env"
    monkeypatch.setenv(
        "AIRFLOW_CONN_TFHUB_DEFAULT",
        json.dumps(
            {
                "conn_type": "tfhub",
                "password": "s3cr3t-token",
                "extra": {"cache_dir": "/from/conn", "load_format": "AUTO"},
            }
        ),
    )
    hook = TFHubHook()
    assert hook.resolve_cache_dir() == "/from/conn"
    assert hook.resolve_cache_dir("/explicit") == "/explicit"
    assert hook.resolve_load_format() == "COMPRESSED"
    assert hook.get_token() == "s3cr3t-token"


def test_operator_validates_at_parse_time() -> None:
    with pytest.raises(InvalidHandleError, match="unsupported scheme"):
        TFHubStageModelOperator(task_id="bad_handle", handle="ftp://example.com/m")
    with pytest.raises(ConfigurationError, match="64-character hex"):
        TFHubStageModelOperator(task_id="bad_pin", handle="https://tfhub.dev/a/b/1", sha256="abc")
    with pytest.raises(ConfigurationError, match="not one of"):
        TFHubStageModelOperator(task_id="bad_fmt", handle="https://tfhub.dev/a/b/1", load_format="ZIP")
    with pytest.raises(ConfigurationError, match="refresh"):
        TFHubStageModelOperator(task_id="bad_refresh", handle="https://tfhub.dev/a/b/1", refresh="sometimes")
    # Templates are rendered later, so they are not validated now.
    TFHubStageModelOperator(task_id="templated", handle="{{ params.handle }}")
    with pytest.raises(TypeError):
        TFHubStageModelOperator("https://tfhub.dev/a/b/1")  # type: ignore[call-arg]


def test_operator_emits_asset_events_and_fails_permanently(hub: Any, handle_of: Any, cache_dir: str) -> None:
    from airflow.sdk.execution_time.context import OutletEventAccessors

    asset = Asset(name="demo_model", uri="tfhub://127.0.0.1/google/demo_v1/1")
    op = TFHubStageModelOperator(task_id="stage", handle=handle_of("demo_v1"), cache_dir=cache_dir, outlets=[asset])
    events = OutletEventAccessors()
    result = op.execute({"outlet_events": events})
    assert result["downloaded"] is True and Path(result["path"], "saved_model.pb").is_file()
    assert events[asset].extra == result
    json.dumps(result)  # XCom-safe

    bad = TFHubStageModelOperator(
        task_id="pinned", handle=handle_of("demo_v2"), cache_dir=cache_dir, sha256="f" * 64, retries=3
    )
    with pytest.raises(AirflowFailException, match="expected ffff"):
        bad.execute({})
    missing = TFHubStageModelOperator(task_id="missing", handle=f"{hub.url}/google/nope/1", cache_dir=cache_dir)
    with pytest.raises(AirflowFailException, match="HTTP 404"):
        missing.execute({})


def test_prestage_dag_maps_and_consumer_sees_paths(hub: Any, handle_of: Any, cache_dir: str) -> None:
    dag = get_dag("tfhub_prestage")
    handles = [handle_of("small_a"), handle_of("small_b"), handle_of("small_a")]
    dr = dag.test(run_conf={"handles": handles, "cache_dir": cache_dir})
    assert dr.state == "success"
    staged = xcom(dr, "stage")
    assert sorted(staged) == [0, 1, 2]
    assert staged[0]["path"] == staged[2]["path"] != staged[1]["path"]
    assert all(Path(s["path"], "saved_model.pb").is_file() for s in staged.values())
    paths = xcom(dr, "consume", map_index=-1)
    assert paths == {handles[0]: staged[0]["path"], handles[1]: staged[1]["path"]}
    assert hub.stats()["models"]["/google/small_a/1"]["archive_full"] == 1
