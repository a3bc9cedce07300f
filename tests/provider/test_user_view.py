"""Issue 15: what an Airflow user sees: the connection form's fields, mapped-task labels, log lines, XComs.

The form is checked here through Airflow's own ``HookMetaService`` (what the UI's ``/ui/connections/
hook_meta`` endpoint returns); ``make test-ui`` checks the rendered form in a real browser.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from airflow_utils import get_dag

from airflow_provider_tfhub.hooks.tfhub import TFHubHook
from tfhub_cache.cache.staging import stage
from tfhub_cache.labels import handle_label
from tfhub_cache.units import format_bytes_si, format_rate_si, human_duration

# A URL with punctuation glued to its end: log viewers make that punctuation part of the link.
GLUED_URL = re.compile(r"(?:https?|gs)://\S*[:.,;)\]]($|\s)")


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 KB"),
        (4_213, "4.2 KB"),
        (12_345, "12.3 KB"),
        (123_456, "123 KB"),
        (999_999, "1.0 MB"),
        (8_500_000, "8.5 MB"),
        (512_000_000, "512 MB"),
        (1_350_000_000, "1.35 GB"),
        (12_300_000_000, "12.3 GB"),
    ],
)
def test_format_bytes_si(n: int, text: str) -> None:
    assert format_bytes_si(n) == text


def test_format_rate_si_and_human_duration() -> None:
    assert format_rate_si(8_500_000) == "8.5 MB/s"
    assert [human_duration(s) for s in (0.04, 4.25, 12.4, 65, 3_599, 3_661)] == [
        "0.0s",
        "4.2s",
        "12s",
        "1m 05s",
        "59m 59s",
        "1h 01m",
    ]


@pytest.mark.parametrize(
    ("handle", "label"),
    [
        ("https://tfhub.dev/google/nnlm-en-dim50/2", "google/nnlm-en-dim50/2"),
        (
            "tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5",
            "google/imagenet/mobilenet_v2_100_224/feature_vector/5",
        ),
        ("https://www.kaggle.com/models/google/yamnet/TensorFlow2/yamnet/1", "google/yamnet/TensorFlow2/yamnet/1"),
        ("http://127.0.0.1:18765/demo/text-embedder/1", "demo/text-embedder/1"),
        ("https://models.example.com/", "models.example.com"),
        ("gs://bucket/exports/bert/model.tar.gz", "bert/model.tar.gz"),
        ("/data/models/bert/", "models/bert"),
        (None, ""),
    ],
)
def test_handle_label(handle: Any, label: str) -> None:
    assert handle_label(handle) == label


def test_long_handle_label_keeps_its_end() -> None:
    handle = "https://models.example.com/" + "x" * 80 + "/publisher/model-name/7"
    label = handle_label(handle, max_len=40)
    assert len(label) <= 40 and label.startswith("…") and label.endswith("/publisher/model-name/7")


# -- logs -------------------------------------------------------------------------------------------
def test_stage_logs_read_like_sentences(
    hub: Any, handle_of: Any, cache_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Human sizes, progress with percent/rate/ETA at most every interval, one line per event, no jargon."""
    handle = handle_of("medium")
    hub.set_faults("/google/medium/1", rate_bytes_per_s=4_000_000)  # ~2 s for the ~8 MB archive
    interval = 0.4
    with caplog.at_level(logging.DEBUG, logger="tfhub_cache"):
        result = stage(handle, cache_dir, progress_interval=interval)
    assert result["path"] is not None
    records = [r for r in caplog.records if r.name.startswith("tfhub_cache")]
    info = [r.getMessage() for r in records if r.levelno >= logging.INFO]

    progress = [r for r in records if r.getMessage().startswith("Downloading ")]
    assert len(progress) >= 2, info
    unit = r"\d+(\.\d+)? (B|KB|MB|GB)"
    line = re.compile(rf"^Downloading {re.escape(handle)} \({unit} of {unit}, \d+%, {unit}/s, about \S+ left\)$")
    assert all(line.match(r.getMessage()) for r in progress), [r.getMessage() for r in progress]
    gaps = [b.created - a.created for a, b in itertools.pairwise(progress)]
    assert all(gap >= interval * 0.9 for gap in gaps), gaps  # never more often than the interval
    percents = [int(re.search(r"(\d+)%", r.getMessage()).group(1)) for r in progress]  # type: ignore[union-attr]
    assert percents == sorted(percents) and percents[-1] < 100

    done = [m for m in info if m.startswith("Downloaded ")]
    average = re.compile(rf"^Downloaded {re.escape(handle)} \({unit} in \S+, {unit}/s on average\)$")
    assert done == [m for m in done if average.match(m)]
    assert len(done) == 1
    staged = [m for m in info if m.startswith("Staged ")]
    assert len(staged) == 1, info  # one line for the event, not "Staged ... into" then "Staged ... at"
    what = rf"\(\d+ files, {unit} from a {unit} archive in \S+\)"
    assert re.match(rf"^Staged {re.escape(handle)} into {re.escape(result['path'])} {what}$", staged[0]), staged
    assert "0.0 MB" not in " ".join(info)
    assert not any(GLUED_URL.search(m) for m in info), info
    assert not any(name in m for m in info for name in ("isal", "zlib", "zlib-ng", "stdlib")), info
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    assert any(m.startswith(f"Decompressed the archive of {handle} with ") for m in debug), debug


def test_operator_logs_one_line_per_staging(
    hub: Any, handle_of: Any, cache_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A download: the core's "Staged ... into ..." only; a cache hit: the operator's "Found ..." only."""
    from structlog.testing import capture_logs

    from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator

    op = TFHubStageModelOperator(task_id="stage", handle=handle_of("small_a"), cache_dir=cache_dir)

    def lines() -> list[str]:
        """Log lines (core: stdlib logging; operator: Airflow's structlog) that name the staged path."""
        with capture_logs() as operator_events, caplog.at_level(logging.INFO):
            caplog.clear()
            result = op.execute({})
        messages = [r.getMessage() for r in caplog.records]
        messages += [e["event"] % tuple(e.get("positional_args", ())) for e in operator_events]
        return [m for m in messages if result["path"] in m]

    first, second = lines(), lines()
    assert len(first) == 1 and first[0].startswith("Staged "), first
    assert len(second) == 1 and second[0].startswith("Found ") and " in the cache at " in second[0], second


def test_prune_operator_log_line(hub: Any, handle_of: Any, cache_dir: str) -> None:
    from structlog.testing import capture_logs

    from airflow_provider_tfhub.operators.prune import TFHubPruneCacheOperator

    stage(handle_of("small_b"), cache_dir)
    op = TFHubPruneCacheOperator(task_id="prune", cache_dir=cache_dir, max_total_bytes=1, dry_run=True)
    with capture_logs() as events:
        op.execute({})
    lines = [e["event"] % tuple(e.get("positional_args", ())) for e in events if "remain" in e["event"]]
    unit = r"\d+(\.\d+)? (B|KB|MB|GB)"
    assert len(lines) == 1 and re.match(
        rf"^Would remove 1 entries and 0 superseded revisions \({unit}, {unit} remain\) from \S+", lines[0]
    ), lines
    assert not GLUED_URL.search(lines[0]) and not lines[0].endswith((".", ";"))


# -- mapped labels and XComs of the example DAG ------------------------------------------------------
def test_prestage_dag_labels_mapped_tasks_and_pushes_one_xcom_per_task(
    hub: Any, handle_of: Any, cache_dir: str, capfd: pytest.CaptureFixture[str]
) -> None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dag = get_dag("tfhub_prestage")
    handles = [handle_of("small_a"), handle_of("small_b")]
    dr = dag.test(run_conf={"handles": handles, "cache_dir": cache_dir})
    assert dr.state == "success"
    out, err = capfd.readouterr()
    with create_session() as session:
        instances = session.scalars(
            select(TaskInstance).where(TaskInstance.run_id == dr.run_id, TaskInstance.task_id == "stage")
        ).all()
        labels = {ti.map_index: ti.rendered_map_index for ti in instances}
        keys = session.scalars(
            select(XComModel.key).where(XComModel.run_id == dr.run_id, XComModel.task_id == "consume")
        ).all()
    assert labels == {0: "google/small_a/1", 1: "google/small_b/1"}
    assert keys == ["return_value"]  # not one more XCom per handle
    assert "XCom not found" not in out + err


def test_partial_keeps_an_explicit_map_index_template() -> None:
    from airflow.sdk import DAG

    from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator

    with DAG("labels_check", schedule=None):
        default = TFHubStageModelOperator.partial(task_id="a").expand(handle=["https://tfhub.dev/a/b/1"])
        own = TFHubStageModelOperator.partial(task_id="b", map_index_template="{{ task.handle }}").expand(
            handle=["https://tfhub.dev/a/b/1"]
        )
    assert default.map_index_template == "{{ task.handle_label }}"
    assert own.map_index_template == "{{ task.handle }}"


def test_labels_keep_the_host_only_where_handles_would_read_alike() -> None:
    from tfhub_cache.labels import ambiguous_labels

    handles = ["https://tfhub.dev/google/x/1", "https://mirror.corp/google/x/1", "https://tfhub.dev/google/y/1"]
    assert ambiguous_labels(handles) == {"google/x/1"}
    assert ambiguous_labels([handles[0], f" {handles[0]} ", handles[2]]) == frozenset()  # same model twice
    assert [handle_label(h, keep_host=True) for h in handles[:2]] == ["tfhub.dev/google/x/1", "mirror.corp/google/x/1"]


def test_mapped_handles_on_two_hosts_are_labelled_with_their_hosts(
    hub: Any, mirror: Any, model_archives: dict[str, Path], cache_dir: str, tmp_path: Path
) -> None:
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    hub.add_model("/google/x/1", model_archives["demo_v1"])
    handles = [f"{hub.url}/google/x/1", f"{mirror.url}/google/x/1", f"{hub.url}/google/small_a/1"]
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "labels_two_hosts.py").write_text(
        "from datetime import datetime\n"
        "from airflow.sdk import DAG\n"
        "from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator\n"
        "with DAG('labels_two_hosts', schedule=None, start_date=datetime(2026, 1, 1)):\n"
        f"    TFHubStageModelOperator.partial(task_id='stage', cache_dir={cache_dir!r}).expand(handle={handles!r})\n"
        f"    TFHubStageModelOperator.partial(task_id='one_host', cache_dir={cache_dir!r}).expand(\n"
        f"        handle={handles[::2]!r}\n"
        "    )\n"
    )
    bag = DagBag(dag_folder=str(tmp_path / "dags"))
    assert not bag.import_errors, bag.import_errors
    # dag.test() serializes only DAGs of the configured bundles: register this file's DAG under one
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)
    dr = bag.get_dag("labels_two_hosts").test()
    assert dr.state == "success"
    with create_session() as session:
        instances = session.scalars(select(TaskInstance).where(TaskInstance.run_id == dr.run_id)).all()
        labels = {(ti.task_id, ti.map_index): ti.rendered_map_index for ti in instances}
    hosts = [h.split("://", 1)[1].split("/", 1)[0] for h in handles]
    assert labels == {
        ("stage", 0): f"{hosts[0]}/google/x/1",
        ("stage", 1): f"{hosts[1]}/google/x/1",
        ("stage", 2): f"{hosts[2]}/google/small_a/1",
        ("one_host", 0): "google/x/1",
        ("one_host", 1): "google/small_a/1",
    }


# -- the connection form -----------------------------------------------------------------------------
def _tfhub_form() -> dict[str, Any]:
    """What the Add Connection form receives for ``tfhub``, from Airflow's own UI service."""
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    HookMetaService.hook_meta_data.cache_clear()
    (meta,) = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "tfhub"]
    return json.loads(meta.model_dump_json())


def test_connection_form_has_one_token_field_and_no_null_choices() -> None:
    form = _tfhub_form()
    standard, extra = form["standard_fields"], form["extra_fields"]
    assert standard["password"]["title"] == "Token" and not standard["password"]["hidden"]
    assert standard["password"]["placeholder"] == "optional: sent only to the model's hub (or its mirror)"
    # no field that does nothing: handles name their host; another endpoint is a mirror
    assert all(standard[f]["hidden"] for f in ("host", "login", "port", "url_schema"))
    titles = [f["schema"]["title"] for f in extra.values()] + [standard["password"]["title"]]
    assert titles.count("Token") == 1
    assert set(extra) == {"cache_dir", "load_format", "gcp_conn_id", "mirrors"}
    for name, field in extra.items():
        assert field["value"] is None, name  # nothing pre-filled
        assert None not in (field["schema"].get("enum") or []), name  # no literal "null" choice
        assert "default" not in field["schema"], name
        assert field["description"], name
    assert extra["load_format"]["schema"]["enum"] == ["AUTO", "COMPRESSED", "UNCOMPRESSED"]
    # Airflow 3.3 gives a conn-field with schema.examples the placeholder "Start typing to see options" and
    # a suggestion list: only where the suggestion is a real value; elsewhere the description shows examples.
    assert [name for name, field in extra.items() if "examples" in field["schema"]] == ["gcp_conn_id"]
    assert "e.g. gs://my-bucket/tfhub-modules" in extra["cache_dir"]["description"]
    assert 'e.g. {"https://tfhub.dev": "https://mirror.corp/tfhub"}' in extra["mirrors"]["description"]


@pytest.mark.parametrize(
    ("conn", "token"),
    [
        ({"password": "from-password"}, "from-password"),
        ({"extra": {"token": "from-extra"}}, "from-extra"),  # connections made before the form change
        ({"password": "from-password", "extra": {"token": "from-extra"}}, "from-password"),
        ({"extra": {"cache_dir": None, "load_format": None, "gcp_conn_id": None}}, None),
    ],
)
def test_token_field_and_compatibility(
    monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any], token: str | None
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TFHUB_DEFAULT", json.dumps({"conn_type": "tfhub", **conn}))
    monkeypatch.setenv("TFHUB_CACHE_DIR", "/from/env")
    hook = TFHubHook()
    assert hook.get_token() == token
    assert hook.resolve_cache_dir() == "/from/env"  # a null the form wrote means "not set"


# -- make demo --------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]


def test_demo_prints_only_its_summary(tmp_path: Path) -> None:
    """A successful ``make demo`` shows no error or warning line; Airflow's own output goes to a log file."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path / "airflow"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "TFHUB_CACHE_DIR": str(tmp_path / "cache"),
        "TFHUB_DEMO_PORT": str(port),
    }
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")], env=env, capture_output=True, text=True, timeout=600
    )
    printed = out.stdout + out.stderr
    assert out.returncode == 0, printed
    assert re.search(r"^  stage \[demo/text-embedder/1\]: downloaded, \d+ files, [\d.]+ KB$", out.stdout, re.M), printed
    assert not re.search(r"error|warning", printed, re.IGNORECASE), printed
    log = re.search(r"Airflow's own log: (\S+)\)", out.stdout)
    assert log and "Staged http://" in Path(log.group(1)).read_text()


def test_export_tasks_are_labelled_by_the_model_they_export(tmp_path: Path) -> None:
    from airflow.sdk import DAG

    from airflow_provider_tfhub.operators.export import TFHubExportForServingOperator

    staged = {"handle": "https://tfhub.dev/google/nnlm-en-dim50/2", "path": str(tmp_path)}
    with DAG("export_labels_check", schedule=None):
        mapped = TFHubExportForServingOperator.partial(
            task_id="mapped", base_path=str(tmp_path), model_name="nnlm"
        ).expand(staged=[staged])
        by_staged = TFHubExportForServingOperator(
            task_id="by_staged", staged=staged, base_path=str(tmp_path), model_name="nnlm"
        )
        by_handle = TFHubExportForServingOperator(
            task_id="by_handle", handle="https://tfhub.dev/google/spice/2", base_path=str(tmp_path), model_name="s"
        )
    assert mapped.map_index_template == by_staged.map_index_template == "{{ task.handle_label }}"
    assert by_staged.handle_label == "google/nnlm-en-dim50/2"
    assert by_handle.handle_label == "google/spice/2"
