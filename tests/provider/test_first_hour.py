"""Issue 22: what a new user trips over in the first hour: mapped bad handles, misleading log lines."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from airflow_utils import get_dag

BAD_HANDLE = "https://tfhub.dev/google/nnlm-en-dim50"  # no version


def _task_instances(dr: Any, task_id: str) -> list[Any]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return list(
            session.scalars(
                select(TaskInstance).where(TaskInstance.run_id == dr.run_id, TaskInstance.task_id == task_id)
            ).all()
        )


# -- a mapped stage with a bad handle ---------------------------------------------------------------
def test_mapped_bad_handle_fails_on_the_first_try_labelled_by_its_handle(
    cache_dir: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """The handles come from XCom, so the operator is built (unmapped) inside the running task."""
    dag = get_dag("tfhub_prestage")  # its stage task has retries=2
    dr = dag.test(run_conf={"handles": [BAD_HANDLE], "cache_dir": cache_dir})
    out, err = capfd.readouterr()
    assert dr.state == "failed"
    (ti,) = _task_instances(dr, "stage")
    assert (ti.state, ti.try_number) == ("failed", 1)  # AirflowFailException: no up_for_retry
    assert ti.rendered_map_index == "google/nnlm-en-dim50"
    log = out + err
    assert f"AirflowFailException: Model handle '{BAD_HANDLE}'" in log
    # the error is raised from execute, after the "Pre Execute" group closed, not inside it
    tail = log[log.rindex("::endgroup::", 0, log.index("AirflowFailException")) :]
    assert "::group::" not in tail[: tail.index("AirflowFailException")]
    # the extra links do not ask for the XCom a failed task never pushed
    assert "XCom not found" not in log


def test_mapped_literal_list_is_checked_at_parse_time(tmp_path: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    (tmp_path / "mapped_literals.py").write_text(
        textwrap.dedent(
            f"""
            from datetime import datetime
            from airflow.sdk import DAG
            from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator

            with DAG("mapped_literals", schedule=None, start_date=datetime(2026, 1, 1)):
                TFHubStageModelOperator.partial(task_id="stage", retries=2).expand(
                    handle=["https://tfhub.dev/google/spice/2", "{BAD_HANDLE}"]
                )
            """
        )
    )
    bag = DagBag(dag_folder=str(tmp_path))
    (error,) = bag.import_errors.values()
    assert f"stage: item 1 of expand(handle=[...]): Model handle '{BAD_HANDLE}'" in error


def test_mapped_partial_and_expand_kwargs_literals_are_checked() -> None:
    from airflow.sdk import DAG

    from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator
    from tfhub_cache.errors import ConfigurationError, InvalidHandleError

    good = "https://tfhub.dev/google/spice/2"
    with DAG("mapped_checks", schedule=None):
        with pytest.raises(ConfigurationError, match=r"partial\(sha256=...\).*64-character hex"):
            TFHubStageModelOperator.partial(task_id="a", sha256="abc").expand(handle=[good])
        with pytest.raises(InvalidHandleError, match=r"item 1 of expand_kwargs\(\[...\]\).*ftp://x/m"):
            TFHubStageModelOperator.partial(task_id="b").expand_kwargs([{"handle": good}, {"handle": "ftp://x/m"}])
        with pytest.raises(ConfigurationError, match=r"item 0 of expand\(load_format=\[...\]\).*ZIP"):
            TFHubStageModelOperator.partial(task_id="c", handle=good).expand(load_format=["ZIP"])
        # templates and XComArgs are left to run time; good literals pass
        mapped = TFHubStageModelOperator.partial(task_id="d").expand(handle=[good, "{{ params.h }}"])
    assert mapped.task_id == "d"


# -- tfhub-cache: a cache that does not exist, CLI wording, exit codes --------------------------------
def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TFHUB_", "AIRFLOW__TFHUB__"))}
    return subprocess.run(
        [sys.executable, "-m", "tfhub_cache.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env if env is not None else base,
    )


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line on stderr: ``tfhub-cache: error: ...``."""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["ls", "verify", "prune"])
def test_lifecycle_commands_fail_on_a_missing_local_cache_dir(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    proc = cli(command, "--cache-dir", str(missing))
    assert proc.returncode == 1 and proc.stdout == ""
    assert error_line(proc) == (
        f"tfhub-cache: error: Cache dir '{missing}' does not exist; check --cache-dir (or TFHUB_CACHE_DIR) for a typo."
    )
    assert not missing.exists()  # nothing was created by looking
    empty = tmp_path / "empty"
    empty.mkdir()
    ok = cli(command, "--cache-dir", str(empty))
    assert ok.returncode == 0, ok.stderr
    if command == "ls":
        assert ok.stdout.startswith(f"{empty}: 0 entries")


@pytest.mark.parametrize("command", ["ls", "verify", "prune", "stage"])
def test_lifecycle_commands_fail_on_a_missing_bucket_like_stage(command: str, gcs_env: dict[str, str]) -> None:
    args = ["https://tfhub.dev/google/spice/2"] if command == "stage" else []
    proc = cli(command, *args, "--cache-dir", "gs://no-such-bucket-i22/tfhub")
    assert proc.returncode == 1
    line = error_line(proc)
    assert line.startswith("tfhub-cache: error: GCS bucket 'no-such-bucket-i22' does not exist")
    assert line.endswith("or fix --cache-dir.")


@pytest.mark.parametrize("command", ["ls", "verify", "prune"])
def test_lifecycle_commands_without_credentials_speak_cli(command: str, tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "NO_GCE_CHECK": "true"}
    proc = cli(command, "--cache-dir", "gs://some-bucket/tfhub", env=env)
    assert proc.returncode == 1
    line = error_line(proc)
    assert line.startswith("tfhub-cache: error: No Google Cloud credentials for the gs:// cache: configure Application")
    assert "gcp_conn_id" not in line and "connection" not in line


def test_prune_operator_fails_on_a_missing_cache_dir(tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_provider_tfhub.operators.prune import TFHubPruneCacheOperator

    op = TFHubPruneCacheOperator(task_id="prune", cache_dir=str(tmp_path / "typo"), max_age="7d", retries=3)
    with pytest.raises(AirflowFailException, match="does not exist; check the cache_dir for a typo"):
        op.execute({})


def test_offline_miss_says_drop_offline(tmp_path: Path) -> None:
    proc = cli("stage", "https://tfhub.dev/google/spice/2", "--offline", "--cache-dir", str(tmp_path))
    assert proc.returncode == 1
    line = error_line(proc)
    assert line.endswith("stage it while online first, or drop --offline (and unset TFHUB_OFFLINE).")
    assert "offline=True" not in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["ls", "--bogus"], "tfhub-cache: error: unrecognized arguments: --bogus (see tfhub-cache --help)"),
        (["stage"], "tfhub-cache stage: error: the following arguments are required: HANDLE"),
        ([], "tfhub-cache: error: the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], expected: str) -> None:
    proc = cli(*args)
    assert proc.returncode == 2
    assert error_line(proc).startswith(expected)


# -- the mirror is named whenever it answered -----------------------------------------------------
MIRRORED = "https://tfhub.dev/google/x/1"  # what test_mirrors' mirror serves at /google/x/1
GLUED_URL = re.compile(r"(?:https?|gs)://\S*[:.,;)\]]($|\s)")


def test_a_404_from_a_wrong_mirror_prefix_names_the_mirror(mirror: Any, tmp_path: Path) -> None:
    from tfhub_cache.cache.staging import stage
    from tfhub_cache.errors import DownloadError

    wrong = f"{mirror.url}/wrong-prefix"
    with pytest.raises(DownloadError) as failed:
        stage(MIRRORED, str(tmp_path / "c"), mirrors={"https://tfhub.dev": wrong})
    message = str(failed.value)
    assert f"{MIRRORED} through mirror {wrong}/google/x/1" in message
    assert "check the mirror prefix" in message and "no model at that handle" not in message
    assert failed.value.permanent


def test_a_refresh_through_a_mirror_logs_the_mirror(
    mirror: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tfhub_cache.cache.staging import stage

    mapping = {"https://tfhub.dev": mirror.url}
    stage(MIRRORED, str(tmp_path / "c"), mirrors=mapping)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tfhub_cache"):
        refreshed = stage(MIRRORED, str(tmp_path / "c"), mirrors=mapping, refresh="always")
    assert refreshed["downloaded"] is True
    lines = [r.getMessage() for r in caplog.records]
    downloaded = [line for line in lines if line.startswith("Downloaded ")]
    assert downloaded and all(
        line.startswith(f"Downloaded {MIRRORED} through mirror {mirror.url}/google/x/1") for line in downloaded
    ), lines
    assert not [line for line in lines if GLUED_URL.search(line)], lines


# -- progress lines -----------------------------------------------------------------------------------
def test_progress_rate_and_time_left_follow_the_recent_rate(caplog: pytest.LogCaptureFixture) -> None:
    """A slow start (one connection) then a fast phase: the rate and time left are those of now."""
    from tfhub_cache.fetch.transfer import ProgressLog

    now = [0.0]
    progress = ProgressLog("https://h/m/1", 100_000_000, interval=5.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="tfhub_cache"):
        for second in range(1, 21):  # 20 s at 100 KB/s: 2 MB
            now[0] = float(second)
            progress.update(second * 100_000)
        for second in range(1, 11):  # then 10 s at 5 MB/s
            now[0] = 20.0 + second
            progress.update(2_000_000 + second * 5_000_000)
        progress.finish(52_000_000)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-2] == "Downloading https://h/m/1 (52.0 MB of 100 MB, 52%, 5.0 MB/s, about 9.6s left)", lines
    assert lines[-1] == "Downloaded https://h/m/1 (52.0 MB in 30s, 1.7 MB/s on average)", lines


# -- the connection form's fields all do something ------------------------------------------------
def test_mirrors_entered_in_the_form_are_used(mirror: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The form saves the Mirrors field as a string in the extra; staging goes through that mirror."""
    import json

    from airflow_provider_tfhub.hooks.tfhub import TFHubHook

    extra = {"mirrors": json.dumps({"https://tfhub.dev": mirror.url}), "cache_dir": str(tmp_path / "c")}
    monkeypatch.setenv("AIRFLOW_CONN_TFHUB_DEFAULT", json.dumps({"conn_type": "tfhub", "extra": extra}))
    staged = TFHubHook().stage(MIRRORED)
    assert staged["downloaded"] is True and staged["handle"] == MIRRORED
    assert mirror.stats()["models"]["/google/x/1"]["archive_full"] == 1


# -- log lines ---------------------------------------------------------------------------------------
def test_an_export_is_logged_once_with_its_path_last(
    hub: Any, handle_of: Any, cache_dir: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from structlog.testing import capture_logs

    from airflow_provider_tfhub.operators.export import TFHubExportForServingOperator

    base = tmp_path / "serving"
    op = TFHubExportForServingOperator(
        task_id="export", handle=handle_of("small_a"), cache_dir=cache_dir, base_path=str(base), model_name="m"
    )
    with capture_logs() as operator_events, caplog.at_level(logging.INFO):
        result = op.execute({})
    messages = [r.getMessage() for r in caplog.records]
    messages += [e["event"] % tuple(e.get("positional_args", ())) for e in operator_events]
    about_export = [m for m in messages if str(base) in m]
    assert about_export == [
        f"Exported {handle_of('small_a')} (sha256 {result['sha256'][:12]}) as version 1 of 'm' at {base}/m/1"
    ], messages
    assert not [m for m in messages if GLUED_URL.search(m)], messages


def test_the_cached_sensor_says_where_it_looks_and_how_often(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    from airflow_provider_tfhub.sensors.cached import TFHubModelCachedSensor

    cache = tmp_path / "cache"
    cache.mkdir()
    handle = "https://tfhub.dev/google/spice/2"
    sensor = TFHubModelCachedSensor(task_id="wait", handle=handle, cache_dir=str(cache), poke_interval=90)
    with capture_logs() as events:
        assert sensor.poke({}) is False
    lines = [e["event"] % tuple(e.get("positional_args", ())) for e in events]
    assert lines == [f"{handle} is not staged in {cache} yet; checking every 1m 30s"], lines


async def test_the_cached_trigger_says_where_it_looks_and_how_often(tmp_path: Path) -> None:
    import asyncio

    from structlog.testing import capture_logs

    from airflow_provider_tfhub.triggers.tfhub import TFHubModelCachedTrigger

    cache = tmp_path / "cache"
    cache.mkdir()
    handle = "https://tfhub.dev/google/spice/2"
    trigger = TFHubModelCachedTrigger(handle=handle, cache_dir=str(cache), poll_interval=0.05)
    with capture_logs() as events, pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(trigger.run()), timeout=1.0)  # never staged: polls for a second
    lines = [e["event"] % tuple(e.get("positional_args", ())) for e in events]
    waiting = [line for line in lines if "is not staged" in line]  # once, not once per poll
    assert waiting == [f"{handle} is not staged in {cache} yet (waiting 0.0s so far); checking every 0.1s"]


def test_with_no_network_the_retries_are_summarised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One warning for a request that keeps failing, then the error that counts the attempts."""
    import socket

    from tfhub_cache.cache.staging import stage
    from tfhub_cache.errors import DownloadError
    from tfhub_cache.retry import RetryPolicy

    with socket.socket() as s:  # a loopback port nobody listens on: connection refused, like no network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    handle = f"http://127.0.0.1:{port}/google/x/1"
    with caplog.at_level(logging.DEBUG, logger="tfhub_cache"), pytest.raises(DownloadError, match="after 5 attempts"):
        stage(handle, str(tmp_path / "c"), retry=RetryPolicy(attempts=5, backoff=0.01))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"Request for {handle} failed ("), warnings
    assert "retrying up to 4 more times" in warnings[0]


def test_every_mapped_operator_checks_its_literals_at_parse_time(tmp_path: Path) -> None:
    from airflow.sdk import DAG

    from airflow_provider_tfhub.operators.export import TFHubExportForServingOperator
    from airflow_provider_tfhub.operators.load import TFHubLoadModelOperator
    from airflow_provider_tfhub.sensors.cached import TFHubModelCachedSensor
    from tfhub_cache.errors import ConfigurationError, InvalidHandleError

    with DAG("mapped_checks_all", schedule=None):
        with pytest.raises(InvalidHandleError, match=rf"export: item 0 of expand\(handle=\[...\]\).*{BAD_HANDLE}"):
            TFHubExportForServingOperator.partial(task_id="export", base_path=str(tmp_path), model_name="m").expand(
                handle=[BAD_HANDLE]
            )
        with pytest.raises(ConfigurationError, match=r"load: item 0 of expand\(tpu=\[...\]\).*tpu='yes'"):
            TFHubLoadModelOperator.partial(task_id="load", handle="https://tfhub.dev/google/spice/2").expand(
                tpu=["yes"]
            )
        with pytest.raises(InvalidHandleError, match=r"wait: item 1 of expand\(handle=\[...\]\)"):
            TFHubModelCachedSensor.partial(task_id="wait").expand(
                handle=["https://tfhub.dev/google/spice/2", BAD_HANDLE]
            )
