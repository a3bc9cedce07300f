"""``import tfhub_cache``: the documented API, its errors, and the one options value staging takes."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tfhub_cache
from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator
from tfhub_cache import errors
from tfhub_cache.cache.options import StageOptions
from tfhub_cache.errors import ConfigurationError, TFHubError


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_is_cheap_and_every_name_resolves_without_airflow_or_tensorflow() -> None:
    out = _run(
        "import json, sys\n"
        "import tfhub_cache\n"
        "bare = sorted(m for m in sys.modules if m.split('.')[0] in ('requests', 'google', 'airflow', 'tensorflow'))\n"
        "values = {n: type(getattr(tfhub_cache, n)).__name__ for n in tfhub_cache.__all__}\n"
        "heavy = sorted(m for m in ('airflow', 'tensorflow', 'tensorflow_hub') if m in sys.modules)\n"
        "print(json.dumps({'bare': bare, 'values': values, 'heavy': heavy}))\n"
    )
    report = json.loads(out)
    assert report["bare"] == []  # no HTTP or GCS client until a function is used
    assert report["heavy"] == []
    assert set(report["values"]) == set(tfhub_cache.__all__)
    assert {"stage", "lookup", "ls", "verify", "prune", "export_for_serving"} <= set(report["values"])
    assert report["values"]["__version__"] == "str"
    assert all(report["values"][n] == "function" for n in ("stage", "lookup", "ls", "verify", "prune"))


def test_unknown_names_fail_like_any_module() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tfhub_cache.nope  # noqa: B018
    assert "stage" in dir(tfhub_cache)


def _library_modules() -> list[Any]:
    """Every module of tfhub_cache that can be imported here, to look for error classes."""
    found = []
    for info in pkgutil.walk_packages(tfhub_cache.__path__, "tfhub_cache."):
        if info.name.startswith(("tfhub_cache.testing", "tfhub_cache.loading")) or info.name.endswith(".__main__"):
            continue  # TensorFlow, test servers, and the CLI's ``python -m`` entry (it runs on import)
        found.append(importlib.import_module(info.name))
    return found


def test_every_public_error_lives_in_errors_and_is_exported() -> None:
    public = {
        obj
        for module in _library_modules()
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, TFHubError) and not name.startswith("_")
    }
    assert {cls.__module__ for cls in public} == {"tfhub_cache.errors"}
    assert {cls.__name__ for cls in public} <= set(tfhub_cache.__all__) & set(errors.__all__)


def test_permanent_is_always_a_constructor_argument() -> None:
    every = {
        obj
        for module in _library_modules()
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, TFHubError)
    }
    for cls in every:
        assert "permanent" not in vars(cls), f"{cls.__name__} sets permanent as a class attribute"
    for cls in (c for c in every if c.__module__ == "tfhub_cache.errors"):
        assert cls("x", permanent=False).permanent is False and cls("x", permanent=True).permanent is True
    assert errors.DownloadError("503").permanent is False and errors.LockTimeoutError("busy").permanent is False
    assert errors.InvalidHandleError("bad").permanent is True and errors.ExportError("taken").permanent is True


def test_stage_options_are_checked_when_built_and_hide_the_token() -> None:
    options = StageOptions(sha256="A" * 64, token="s3cr3t", refresh="IF_CHANGED", download_connections="3")  # type: ignore[arg-type]
    assert (options.sha256, options.refresh, options.download_connections) == ("a" * 64, "if_changed", 3)
    assert "s3cr3t" not in repr(options)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.refresh = "always"  # type: ignore[misc]
    with pytest.raises(ConfigurationError, match=r"Refresh mode 'sometimes' \(from argument `refresh`\)"):
        StageOptions(refresh="sometimes")
    with pytest.raises(ConfigurationError, match=r"Load format 'zip' \(from argument `load_format`\)"):
        StageOptions(load_format="zip")
    with pytest.raises(ConfigurationError, match="Argument `mirrors`"):
        StageOptions(mirrors="{oops")
    with pytest.raises(TypeError):
        StageOptions(no_such_option=1)  # type: ignore[call-arg]


def test_stage_options_resolve_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFHUB_DOWNLOAD_CONNECTIONS", "2")
    monkeypatch.setenv("TFHUB_OFFLINE", "1")
    monkeypatch.setenv("TFHUB_MAX_EXTRACTED_FILES", "77")
    monkeypatch.setenv("TFHUB_DOWNLOAD_RETRIES", "4")
    resolved = StageOptions(download_connections=5).resolved()
    assert resolved.download_connections == 5  # the argument wins
    assert (resolved.offline, resolved.max_extracted_files, resolved.load_format) == (True, 77, "COMPRESSED")
    assert resolved.retry is not None and resolved.retry.attempts == 4
    monkeypatch.setenv("TFHUB_DOWNLOAD_RETRIES", "-1")
    with pytest.raises(ConfigurationError, match="`TFHUB_DOWNLOAD_RETRIES` is '-1'"):
        StageOptions().resolved()


def test_the_api_stages_looks_up_lists_verifies_and_prunes(hub: Any, handle_of: Any, cache_dir: str) -> None:
    handle = handle_of("small_a")
    assert tfhub_cache.lookup(handle, cache_dir) is None
    staged = tfhub_cache.stage(handle, cache_dir, refresh="never")
    assert staged["downloaded"] is True and Path(staged["path"], "saved_model.pb").is_file()
    looked_up = tfhub_cache.lookup(handle, cache_dir)
    assert looked_up is not None and looked_up["path"] == staged["path"] and looked_up["downloaded"] is False
    again = tfhub_cache.stage(handle, cache_dir, options=StageOptions(refresh="never"))
    assert again["path"] == staged["path"] and again["downloaded"] is False
    assert hub.stats()["models"]["/google/small_a/1"]["archive_full"] == 1
    with pytest.raises(TypeError, match="not both"):
        tfhub_cache.stage(handle, cache_dir, options=StageOptions(), refresh="always")
    [entry] = tfhub_cache.ls(cache_dir)
    assert entry["handle"] == handle
    assert tfhub_cache.verify(cache_dir)["ok"] is True
    report = tfhub_cache.prune(cache_dir, max_age=0, dry_run=True)
    assert [r["handle"] for r in report["removed"]] == [handle] and tfhub_cache.lookup(handle, cache_dir) is not None


# -- a bad setting names where it came from (issue 22 item 6), through the operator and the hook ------


def _fails_naming(op: TFHubStageModelOperator, needle: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException) as exc:  # permanent: no retries
        op.execute({})
    assert needle in str(exc.value)


def test_a_bad_connection_extra_is_named_with_its_connection(
    monkeypatch: pytest.MonkeyPatch, handle_of: Any, cache_dir: str
) -> None:
    monkeypatch.delenv("TFHUB_MODEL_LOAD_FORMAT", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_TFHUB_ZIPPED", json.dumps({"conn_type": "tfhub", "extra": {"load_format": "zip"}}))
    op = TFHubStageModelOperator(
        task_id="stage", handle=handle_of("small_a"), cache_dir=cache_dir, tfhub_conn_id="tfhub_zipped"
    )
    _fails_naming(op, "Load format 'zip' (from connection `tfhub_zipped` extra `load_format`) is not one of")
    monkeypatch.setenv(
        "AIRFLOW_CONN_TFHUB_ZIPPED", json.dumps({"conn_type": "tfhub", "extra": {"mirrors": '{"x": 1}'}})
    )
    _fails_naming(op, "Connection `tfhub_zipped` extra `mirrors`")
    assert not Path(cache_dir).exists()  # nothing was staged


def test_a_bad_environment_variable_or_config_value_is_named(
    monkeypatch: pytest.MonkeyPatch, handle_of: Any, cache_dir: str
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_TFHUB_DEFAULT", raising=False)
    op = TFHubStageModelOperator(task_id="stage", handle=handle_of("small_a"), cache_dir=cache_dir)
    monkeypatch.setenv("TFHUB_MODEL_LOAD_FORMAT", "bogus")
    _fails_naming(op, "Load format 'bogus' (from environment variable `TFHUB_MODEL_LOAD_FORMAT`)")
    monkeypatch.delenv("TFHUB_MODEL_LOAD_FORMAT")
    monkeypatch.setenv("AIRFLOW__TFHUB__LOCK_TIMEOUT", "-5")
    _fails_naming(op, "Lock timeout '-5' (from `[tfhub] lock_timeout` in airflow.cfg)")
    monkeypatch.delenv("AIRFLOW__TFHUB__LOCK_TIMEOUT")
    monkeypatch.setenv("TFHUB_DOWNLOAD_CONNECTIONS", "lots")
    _fails_naming(op, "Environment variable `TFHUB_DOWNLOAD_CONNECTIONS` is 'lots'")
    assert not Path(cache_dir).exists()
