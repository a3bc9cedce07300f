"""Issue 20, loading decided where the model is loaded: the plan travels as JSON and is settled on the host.

A plan built on the Airflow worker for a declared TPU target names a ``gs://`` revision (the workers
read it, no options). On the training host, ``resolve_plan``/``load`` with ``local_cache`` pull that
revision onto the local disk (no hub request) and then, on a TPU, read it through the coordinator
(``/job:localhost``); off TPU with no options; without ``local_cache`` the ``gs://`` path stays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tfhub_cache import loading
from tfhub_cache.cache.staging import stage
from tfhub_cache.errors import ConfigurationError
from tfhub_cache.testing.models import expected_output

IO_DEVICE_OPTIONS = {"experimental_io_device": "/job:localhost"}


def test_a_plan_survives_json_and_bad_json_is_refused_clearly() -> None:
    staged = {
        "path": "gs://b/c/" + "a" * 40 + ".revisions/0123456789ab",
        "handle": "https://h/m/1",
        "revision": "0123456789ab",
    }
    plan = loading.build_plan(staged, tpu=True)

    assert plan["cache_dir"] == "gs://b/c"  # derived from the revision path when the record has none
    assert loading.plan_from_json(loading.plan_to_json(plan)) == plan
    with pytest.raises(ConfigurationError, match="not JSON"):
        loading.plan_from_json("{not json")
    with pytest.raises(ConfigurationError, match="lacks tpu, load_options, reason"):
        loading.plan_from_json(json.dumps({"path": "/x", "handle": None, "load_format": "COMPRESSED"}))
    old = {k: v for k, v in plan.items() if k not in ("revision", "cache_dir")}  # an XCom of an older release
    assert loading.plan_from_json(json.dumps(old))["revision"] is None


def test_the_training_host_pulls_the_planned_revision_and_decides_its_options(
    hub: Any, handle_of: Any, gcs_cache: str, tmp_path: Path
) -> None:
    handle = handle_of("demo_v1")
    staged: Any = stage(handle, gcs_cache)
    travelled = loading.plan_to_json(loading.build_plan(staged, tpu=True))  # declared on the Airflow worker
    assert json.loads(travelled)["load_options"] == {}  # gs:// on a TPU: the workers read it
    hub.reset_stats()
    local = str(tmp_path / "local")

    on_tpu = loading.resolve_plan(travelled, local_cache=local, tpu=True)
    off_tpu = loading.resolve_plan(travelled, local_cache=local, tpu=False)
    direct = loading.resolve_plan(travelled, tpu=True)

    assert on_tpu["path"] == str(Path(local) / Path(staged["path"]).relative_to(Path(staged["path"]).parents[1]))
    assert on_tpu["revision"] == staged["revision"] and on_tpu["load_options"] == IO_DEVICE_OPTIONS
    assert "/job:localhost" in on_tpu["reason"]
    assert off_tpu["path"] == on_tpu["path"] and off_tpu["load_options"] == {} and off_tpu["tpu"] is False
    assert direct == json.loads(travelled)  # nothing differs on this host: the plan as it came
    assert hub.stats()["requests"] == 0


LOAD_SCRIPT = """
import json, os, sys
import tensorflow as tf
from tfhub_cache import loading
out = {}
for tpu in (True, "auto"):
    plan = loading.resolve_plan(os.environ["TFHUB_LOAD_PLAN"], local_cache=sys.argv[1], tpu=tpu)
    model = loading.load(os.environ["TFHUB_LOAD_PLAN"], local_cache=sys.argv[1], tpu=tpu)
    y = model.signatures["serving_default"](x=tf.ones([1, 3]))["y"].numpy().tolist()
    out[str(tpu)] = {"plan": plan, "y": y}
print("RESULT " + json.dumps(out))
"""


def test_load_from_a_plan_in_an_environment_variable_pulls_and_computes(
    hub: Any, handle_of: Any, gcs_cache: str, gcs_env: dict[str, str], tmp_path: Path
) -> None:
    handle = handle_of("demo_v2")
    staged: Any = stage(handle, gcs_cache)
    plan = loading.build_plan(staged, tpu=True)
    local = str(tmp_path / "local")
    env = {k: v for k, v in os.environ.items() if k not in loading.TPU_ENV_VARS}
    env.update(gcs_env, TPU_NAME="", TFHUB_LOAD_PLAN=loading.plan_to_json(plan))  # blank TPU_NAME: no TPU here

    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOAD_SCRIPT), local],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    expected = expected_output([[1.0, 1.0, 1.0]], scale=2.0, offset=5.0)
    assert out["True"]["plan"]["load_options"] == IO_DEVICE_OPTIONS and out["True"]["y"] == expected
    assert out["auto"]["plan"]["load_options"] == {} and out["auto"]["plan"]["tpu"] is False
    assert "auto-detected no TPU" in out["auto"]["plan"]["reason"] and out["auto"]["y"] == expected
    assert out["True"]["plan"]["path"].startswith(local) and out["True"]["plan"]["revision"] == staged["revision"]
