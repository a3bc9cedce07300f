"""Issue 4 acceptance: the TPU-aware load plan, the load operator, and UNCOMPRESSED mode.

The plan rules, validation and UNCOMPRESSED resolution run in this process, which must never import
TensorFlow (other modules assert that staging keeps it out). Everything that loads a model runs in a
subprocess: the load operator with ``tpu=True`` forced on CPU, a ``gs://`` model read from the GCS
emulator by stock TensorFlow (through a TLS relay, see ``tls_relay.py``), and a Python where
``import tensorflow`` fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException
from tls_relay import TFGCS, tf_gcs

from airflow_provider_tfhub.hooks.tfhub import TFHubHook
from airflow_provider_tfhub.operators.load import TFHubLoadModelOperator
from tfhub_cache import loading
from tfhub_cache.cache.staging import stage
from tfhub_cache.errors import ConfigurationError, DownloadError, InvalidHandleError
from tfhub_cache.testing.models import expected_output

ROOT = Path(__file__).resolve().parents[2]
SMALL_A = {"scale": 3.0, "offset": 0.5}  # conftest.MODEL_SPECS["small_a"]
IO_DEVICE_OPTIONS = {"experimental_io_device": "/job:localhost"}
GS_LOCATION = "gs://tfhub-modules/google/small_a/1/uncompressed"


def env_without_tpu(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment minus every TPU signal, plus ``extra``."""
    base = {k: v for k, v in os.environ.items() if k not in (*loading.TPU_ENV_VARS, "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS")}
    return {**base, **(extra or {})}


def run_py(code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> dict[str, Any]:
    """Run ``code`` in a fresh Python without TPU variables; it must print one ``RESULT <json>`` line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env_without_tpu(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return result


@pytest.fixture
def no_tpu_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in loading.TPU_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def staged_dict(path: str, **extra: Any) -> dict[str, Any]:
    return {"handle": "https://tfhub.dev/google/demo/1", "path": path, "load_format": "COMPRESSED", **extra}


# -- the plan: rules and validation (no TensorFlow) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "tpu", "options"),
    [
        ("/cache/tfhub_modules/abc", True, IO_DEVICE_OPTIONS),
        ("relative/model", True, IO_DEVICE_OPTIONS),
        ("file:///cache/abc", True, IO_DEVICE_OPTIONS),
        ("gs://bucket/tfhub/abc", True, {}),
        ("/cache/tfhub_modules/abc", False, {}),
        ("gs://bucket/tfhub/abc", False, {}),
    ],
)
def test_plan_rules(path: str, tpu: bool, options: dict[str, str]) -> None:
    plan = loading.build_plan(staged_dict(path), tpu=tpu)

    assert list(plan) == ["path", "handle", "revision", "cache_dir", "load_format", "tpu", "load_options", "reason"]
    assert plan["path"] == path and plan["handle"] == "https://tfhub.dev/google/demo/1"
    assert plan["tpu"] is tpu and plan["load_options"] == options
    assert f"tpu={tpu} forced" in plan["reason"]
    assert json.loads(json.dumps(plan)) == plan
    assert loading.is_plan(plan) and not loading.is_plan(staged_dict(path))


def test_plan_of_uncompressed_staging_reads_gs_in_place() -> None:
    staged = staged_dict(GS_LOCATION, load_format="UNCOMPRESSED", downloaded=False, cache_dir=None)

    plan = loading.build_plan(staged, tpu=True)

    assert plan["load_format"] == "UNCOMPRESSED" and plan["path"] == GS_LOCATION
    assert plan["load_options"] == {} and "gs://" in plan["reason"]


@pytest.mark.parametrize("variable", loading.TPU_ENV_VARS)
def test_auto_detects_tpu_from_environment(no_tpu_env: pytest.MonkeyPatch, variable: str) -> None:
    no_tpu_env.setenv(variable, "grpc://10.0.0.2:8470")

    local = loading.build_plan(staged_dict("/cache/abc"), tpu="auto")
    remote = loading.build_plan(staged_dict("gs://b/abc"), tpu="AUTO")

    assert local["tpu"] is True and local["load_options"] == IO_DEVICE_OPTIONS
    assert f"{variable} is set" in local["reason"]
    assert remote["tpu"] is True and remote["load_options"] == {}
    assert loading.detect_tpu() is True


def test_blank_tpu_name_means_no_tpu_without_asking_the_resolver(no_tpu_env: pytest.MonkeyPatch) -> None:
    """``TPU_NAME=`` (e.g. from a compose file) is "no TPU"; TensorFlow's resolver would take "" for a TPU
    name and query the GCE metadata server. Decided from the environment alone: no TensorFlow import."""
    no_tpu_env.setenv("TPU_NAME", "  ")
    no_tpu_env.setenv("COLAB_TPU_ADDR", "")

    plan = loading.build_plan(staged_dict("/cache/abc"), tpu="auto")

    assert plan["tpu"] is False and plan["load_options"] == {}
    assert "TPU_NAME is set but empty" in plan["reason"]


@pytest.mark.parametrize("bad", ["yes", "true", "", 1, 0, None, "tpu"])
def test_tpu_setting_is_validated(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"tpu=.*use tpu=True, tpu=False or tpu='auto'"):
        loading.build_plan(staged_dict("/m"), tpu=bad)
    with pytest.raises(ConfigurationError, match="tpu="):
        TFHubLoadModelOperator(task_id="load", staged={"path": "/m"}, tpu=bad)


@pytest.mark.parametrize(
    "staged",
    [{"handle": "https://tfhub.dev/a/b/1"}, {"path": ""}, {"path": None}, {"path": 42}],
)
def test_staged_dict_without_path_is_a_clear_error(staged: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=r"no usable 'path'.*stage operator's XCom"):
        loading.build_plan(staged, tpu=False)


def test_non_dict_staged_value_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"Expected a staged-model dict.*got str"):
        loading.build_plan("/cache/abc", tpu=False)  # type: ignore[arg-type]


def test_plan_with_unknown_load_options_is_a_clear_error() -> None:
    plan = {**loading.build_plan(staged_dict("/m"), tpu=False), "load_options": "fast"}
    with pytest.raises(ConfigurationError, match="load_options must be a dict"):
        loading.load(plan)


def test_local_path_missing_on_this_worker_is_a_clear_error(tmp_path: Path) -> None:
    """Stage on one worker, load on another with a local cache: say so before TensorFlow is imported."""
    missing = str(tmp_path / "staged-elsewhere")
    with pytest.raises(FileNotFoundError, match=r"does not exist on this machine .*same worker.*gs:// cache"):
        loading.load(staged_dict(missing), tpu=True)
    with pytest.raises(FileNotFoundError, match="does not exist on this machine"):
        loading.load(staged_dict("file://" + missing), tpu=False)


# -- the operator at DAG-parse time -----------------------------------------------------------------------------


def test_operator_needs_exactly_one_of_handle_and_staged() -> None:
    with pytest.raises(ConfigurationError, match=r"exactly one of handle=.*staged=.*got neither"):
        TFHubLoadModelOperator(task_id="neither")
    with pytest.raises(ConfigurationError, match=r"exactly one of handle=.*staged=.*got both"):
        TFHubLoadModelOperator(task_id="both", handle="https://tfhub.dev/a/b/1", staged={"path": "/m"})


def test_operator_validates_arguments_at_parse_time() -> None:
    with pytest.raises(ConfigurationError, match="not one of"):
        TFHubLoadModelOperator(task_id="fmt", handle="https://tfhub.dev/a/b/1", load_format="ZIP")
    with pytest.raises(InvalidHandleError, match="unsupported scheme"):
        TFHubLoadModelOperator(task_id="handle", handle="ftp://example.com/m")
    with pytest.raises(ConfigurationError, match="apply to staging a handle="):
        TFHubLoadModelOperator(task_id="fmt_staged", staged={"path": "/m"}, load_format="UNCOMPRESSED")
    with pytest.raises(ConfigurationError, match="apply to staging a handle="):
        TFHubLoadModelOperator(task_id="cache_staged", staged={"path": "/m"}, cache_dir="/c")
    with pytest.raises(ConfigurationError, match="signature="):
        TFHubLoadModelOperator(task_id="sig", staged={"path": "/m"}, signature="")
    with pytest.raises(TypeError):
        TFHubLoadModelOperator({"path": "/m"})  # type: ignore[call-arg,arg-type]
    op = TFHubLoadModelOperator(task_id="templated", handle="{{ params.handle }}", tpu=False, load_format="auto")
    assert op.template_fields == ("handle", "staged", "cache_dir", "hold_for") and op.tpu is False


# -- UNCOMPRESSED against the loopback hub (no TensorFlow) --------------------------------------------------------


def test_uncompressed_returns_the_303_body_and_writes_nothing(hub: Any, handle_of: Any, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    handle = handle_of("small_a")

    staged = stage(handle, str(cache), load_format="UNCOMPRESSED")
    via_hook = TFHubHook().stage(handle, str(cache), load_format="uncompressed")

    for result in (staged, via_hook):
        assert result["path"] == GS_LOCATION and result["load_format"] == "UNCOMPRESSED"
        assert result["downloaded"] is False and result["handle"] == handle
    assert not cache.exists()
    models = hub.stats()["models"]["/google/small_a/1"]
    assert models["uncompressed"] == 2 and models["compressed"] == 0 and models["archive_full"] == 0


def test_uncompressed_from_environment_writes_nothing(
    hub: Any, handle_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED`` (tensorflow_hub's variable) switches the mode too."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("TFHUB_MODEL_LOAD_FORMAT", "UNCOMPRESSED")

    staged = TFHubHook().stage(handle_of("small_a"), str(cache))

    assert staged["path"] == GS_LOCATION and list(cache.iterdir()) == []


def test_uncompressed_404_is_a_clear_error(hub: Any, model_archives: dict[str, Path], tmp_path: Path) -> None:
    handle = hub.add_model("/google/no_uncompressed/1", model_archives["small_a"])  # no gs:// location
    with pytest.raises(DownloadError, match=r"expected HTTP 303 .* received HTTP 404") as info:
        stage(handle, str(tmp_path / "cache"), load_format="UNCOMPRESSED")
    assert info.value.status == 404 and info.value.permanent
    op = TFHubLoadModelOperator(
        task_id="load", handle=handle, load_format="UNCOMPRESSED", cache_dir=str(tmp_path / "cache"), retries=3
    )
    with pytest.raises(AirflowFailException, match="HTTP 404"):  # permanent: no retries
        op.execute({})
    assert not (tmp_path / "cache").exists()


def test_uncompressed_200_is_a_clear_error(hub: Any, model_archives: dict[str, Path], tmp_path: Path) -> None:
    """A URL that answers the archive (200) to ``?tf-hub-format=uncompressed`` serves no uncompressed models."""
    handle = hub.add_archive("plain/model.tar.gz", model_archives["small_a"])
    with pytest.raises(DownloadError, match=r"received HTTP 200 .*use load_format='COMPRESSED'") as info:
        stage(handle, str(tmp_path / "cache"), load_format="UNCOMPRESSED")
    assert info.value.status == 200
    assert not (tmp_path / "cache").exists()


# -- loading on CPU with tpu=True forced (subprocess: TensorFlow) -----------------------------------------------------

FORCED_TPU_SCRIPT = """
import json, sys
from tfhub_cache import loading
from tfhub_cache.cache.staging import stage
from airflow_provider_tfhub.operators.load import TFHubLoadModelOperator

handle, cache, staged_cache = sys.argv[1:4]
out = {}
# 1. The operator stages through the hook, plans for a TPU, loads with that plan, smoke-tests.
xcom = TFHubLoadModelOperator(task_id="load", handle=handle, cache_dir=cache, tpu=True).execute({})
json.dumps(xcom)  # XCom-safe
out["xcom"] = xcom
# 2. Training code on the TPU host (declared here: this machine has none) loads from the XCom plan.
import tensorflow as tf
model = loading.load(xcom, tpu=True)
out["y"] = model.signatures["serving_default"](x=tf.constant([[1.0, 2.0, 3.0]]))["y"].numpy().tolist()
out["call"] = model(tf.constant([[1.0, 1.0, 1.0]])).numpy().tolist()
# 3. The options really reach tf.saved_model.load: an unknown io device fails the load.
try:
    loading.load({**xcom, "load_options": {"experimental_io_device": "/job:nonexistent"}}, tpu=True)
    out["bogus_device"] = None
except Exception as exc:
    out["bogus_device"] = f"{type(exc).__name__}: {exc}"
# 4. staged= (an XCom dict) and tpu="auto" without any TPU signal on this machine.
staged = stage(handle, staged_cache)
out["auto"] = TFHubLoadModelOperator(task_id="auto", staged=staged, smoke_test=False).execute({})
out["missing_signature"] = TFHubLoadModelOperator(
    task_id="sig", staged=staged, tpu=False, signature="nope"
).execute({})["smoke_test"]
# 5. Specs the smoke call cannot feed, outputs too big for XCom, a model without signatures.
import tempfile
class Odd(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 2000], tf.float32, name="wide")])
    def wide(self, wide):
        return {"big": wide + 1.0, "total": tf.reduce_sum(wide, axis=1)}
    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="ids"), tf.TensorSpec([], tf.string)])
    def ragged(self, ids, text):
        return {"n": tf.size(ids)}
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def __call__(self, x):
        return x
odd = Odd()
odd_dir, bare_dir = tempfile.mkdtemp(), tempfile.mkdtemp()
tf.saved_model.save(odd, odd_dir, signatures={"wide": odd.wide, "ragged": odd.ragged})
tf.saved_model.save(odd, bare_dir, signatures={})
odd_model = loading.load({"path": odd_dir}, tpu=False)
out["odd_signatures"] = loading.describe_signatures(odd_model)
out["odd_wide"] = loading.smoke_call(odd_model, "wide")
out["odd_ragged"] = loading.smoke_call(odd_model, "ragged")
out["bare"] = loading.smoke_call(loading.load({"path": bare_dir}, tpu=False))
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def forced_tpu_run(
    hub_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Any], str, str]]:
    base = tmp_path_factory.mktemp("forced-tpu")
    handle, cache, staged_cache = f"{hub_server.url}/google/small_a/1", str(base / "c1"), str(base / "c2")
    yield run_py(FORCED_TPU_SCRIPT, handle, cache, staged_cache), handle, cache


def test_tpu_forced_plan_uses_the_coordinator_io_device(forced_tpu_run: tuple[dict[str, Any], str, str]) -> None:
    result, handle, cache = forced_tpu_run
    xcom = result["xcom"]

    assert xcom["tpu"] is True and xcom["load_options"] == IO_DEVICE_OPTIONS
    assert xcom["handle"] == handle and xcom["load_format"] == "COMPRESSED"
    assert xcom["path"].startswith(cache) and Path(xcom["path"], "saved_model.pb").is_file()
    assert "tpu=True forced" in xcom["reason"] and "/job:localhost" in xcom["reason"]


def test_model_loads_with_the_plan_and_smoke_call_returns_offset(
    forced_tpu_run: tuple[dict[str, Any], str, str],
) -> None:
    result, _, _ = forced_tpu_run
    smoke = result["xcom"]["smoke_test"]

    assert smoke["called"] is True and smoke["signature"] == "serving_default" and smoke["reason"] is None
    assert smoke["inputs"] == {"x": {"dtype": "float32", "shape": [1, 3]}}
    assert smoke["outputs"] == {"y": expected_output([[0.0, 0.0, 0.0]], **SMALL_A)} == {"y": [[0.5, 0.5, 0.5]]}
    assert smoke["output_shapes"] == {"y": [1, 3]} and smoke["omitted"] == []
    assert result["y"] == expected_output([[1.0, 2.0, 3.0]], **SMALL_A)
    assert result["call"] == expected_output([[1.0, 1.0, 1.0]], **SMALL_A)


def test_signatures_are_described_as_json(forced_tpu_run: tuple[dict[str, Any], str, str]) -> None:
    result, _, _ = forced_tpu_run
    spec = {"dtype": "float32", "shape": [None, 3]}
    assert result["xcom"]["signatures"] == {"serving_default": {"inputs": {"x": spec}, "outputs": {"y": spec}}}


def test_load_options_really_reach_tensorflow(forced_tpu_run: tuple[dict[str, Any], str, str]) -> None:
    result, _, _ = forced_tpu_run
    assert result["bogus_device"] is not None and "/job:nonexistent" in result["bogus_device"]


def test_auto_without_tpu_loads_with_default_options(forced_tpu_run: tuple[dict[str, Any], str, str]) -> None:
    result, handle, _ = forced_tpu_run
    auto = result["auto"]

    assert auto["tpu"] is False and auto["load_options"] == {} and auto["handle"] == handle
    assert "auto-detected no TPU" in auto["reason"] and "TPU cluster resolver" in auto["reason"]
    assert "smoke_test" not in auto and "serving_default" in auto["signatures"]


def test_missing_signature_skips_the_smoke_call_naming_the_available_ones(
    forced_tpu_run: tuple[dict[str, Any], str, str],
) -> None:
    smoke = forced_tpu_run[0]["missing_signature"]
    assert smoke["called"] is False and smoke["outputs"] == {}
    assert "no signature 'nope'" in smoke["reason"] and "serving_default" in smoke["reason"]


def test_smoke_call_feeds_only_what_it_can_and_keeps_xcom_small(
    forced_tpu_run: tuple[dict[str, Any], str, str],
) -> None:
    result = forced_tpu_run[0]

    wide = result["odd_wide"]
    assert wide["called"] is True and wide["inputs"] == {"wide": {"dtype": "float32", "shape": [1, 2000]}}
    assert wide["outputs"] == {"big": None, "total": [0.0]} and wide["omitted"] == ["big"]
    assert wide["output_shapes"] == {"big": [1, 2000], "total": [1]}
    ragged = result["odd_ragged"]
    assert ragged["called"] is False and "shape [None, None]: only the batch dimension" in ragged["reason"]
    assert result["bare"]["called"] is False and "exports no signatures" in result["bare"]["reason"]
    described = result["odd_signatures"]
    assert described["ragged"]["inputs"]["ids"] == {"dtype": "int32", "shape": [None, None]}
    assert described["wide"]["outputs"]["total"] == {"dtype": "float32", "shape": [None]}


# -- without TensorFlow (subprocess where ``import tensorflow`` fails) ---------------------------------------------

NO_TENSORFLOW_SCRIPT = """
import json, runpy, sys
sys.modules["tensorflow"] = None  # "import tensorflow" now raises ImportError, as if not installed
from airflow.sdk.exceptions import AirflowFailException
from tfhub_cache import loading
from airflow_provider_tfhub.operators.load import TFHubLoadModelOperator
runpy.run_path(sys.argv[1])  # the example DAG parses without TensorFlow
out = {"detect": loading._detect()}
out["plans"] = [loading.build_plan({"path": p}, tpu=t)["load_options"] for p, t in [("/m", True), ("gs://b/m", True)]]
model_dir = sys.argv[2]  # exists: only the missing TensorFlow can stop the load
try:
    loading.load({"path": model_dir}, tpu=False)
except ImportError as exc:
    out["load_error"] = str(exc)
op = TFHubLoadModelOperator(task_id="load", staged={"handle": "h", "path": model_dir}, tpu=False, retries=3)
try:
    op.execute({})
except AirflowFailException as exc:
    out["operator_error"] = str(exc)
out["tf_modules"] = sorted(m for m in sys.modules if m.startswith("tensorflow.") or m == "tensorflow_hub")
print("RESULT " + json.dumps(out))
"""


def test_without_tensorflow_errors_name_the_extra_and_parsing_still_works(tmp_path: Path) -> None:
    result = run_py(NO_TENSORFLOW_SCRIPT, str(ROOT / "dags" / "tfhub_tpu_training.py"), str(tmp_path))

    hint = loading.TENSORFLOW_INSTALL_HINT
    assert 'pip install "tfhub-cache[tensorflow]"' in hint
    assert hint in result["load_error"] and "TensorFlow is required" in result["load_error"]
    assert hint in result["operator_error"]  # AirflowFailException: retrying cannot install TensorFlow
    assert result["detect"] == [
        False,
        f"none of {', '.join(loading.TPU_ENV_VARS)} is set and TensorFlow is not installed",
    ]
    assert result["plans"] == [IO_DEVICE_OPTIONS, {}]
    assert result["tf_modules"] == []


# -- a gs:// UNCOMPRESSED location in the GCS emulator, loaded by stock TensorFlow -----------------------------------

GS_LOAD_SCRIPT = """
import json, sys
import tensorflow as tf
from tfhub_cache import loading
plan = json.loads(sys.argv[1])
model = loading.load(plan)
out = {
    "y": model.signatures["serving_default"](x=tf.constant([[1.0, 2.0, 3.0]]))["y"].numpy().tolist(),
    "smoke": loading.smoke_call(model),
    "exists": tf.io.gfile.exists(plan["path"] + "/saved_model.pb"),
}
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def gcs_for_tf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TFGCS]:
    with tf_gcs(tmp_path_factory.mktemp("tf-gcs")) as env:
        yield env


def test_uncompressed_gs_location_loads_through_the_plan(
    hub: Any, model_archives: dict[str, Path], gcs_for_tf: TFGCS, tmp_path: Path
) -> None:
    saved_model = model_archives["small_a"].parent / "saved_model"
    location = "gs://tfhub-modules/google/gs_demo/1/uncompressed"
    assert gcs_for_tf.upload_tree(saved_model, location) >= 3
    handle = hub.add_model("/google/gs_demo/1", model_archives["small_a"], uncompressed_location=location)
    cache = tmp_path / "cache"

    staged = TFHubHook().stage(handle, str(cache), load_format="UNCOMPRESSED")
    plan = loading.build_plan(staged, tpu=True)
    result = run_py(GS_LOAD_SCRIPT, json.dumps(plan), env=gcs_for_tf.env)

    assert staged["path"] == location and not cache.exists()
    assert plan["load_options"] == {} and plan["tpu"] is True and plan["load_format"] == "UNCOMPRESSED"
    assert result["exists"] is True
    assert result["y"] == expected_output([[1.0, 2.0, 3.0]], **SMALL_A)
    assert result["smoke"]["outputs"] == {"y": [[0.5, 0.5, 0.5]]}
    stats = gcs_for_tf.relay.stats
    assert stats.refused == []  # TensorFlow asked for nothing but the two Google storage hosts
    assert stats.connects.get("www.googleapis.com", 0) > 0 and stats.connects.get("storage.googleapis.com", 0) > 0


QUIET_LOAD_SCRIPT = """
import json, logging, sys
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
from airflow_provider_tfhub.operators.load import TFHubLoadModelOperator
xcom = TFHubLoadModelOperator(task_id="load", handle=sys.argv[1], cache_dir=sys.argv[2], tpu=False).execute({})
print("RESULT " + json.dumps({"called": xcom["smoke_test"]["called"]}))
"""

#: What TensorFlow's native runtime writes to fd 2 at start-up on a CPU-only machine (oneDNN, CUDA probes).
NATIVE_NOTICES = ("E0000", "I0000", "oneDNN", "cudart_stub", "cuInit", "absl::InitializeLog")


def test_tensorflow_native_notices_go_to_the_log_not_stderr(hub_server: Any, tmp_path: Path) -> None:
    """Airflow shows each stderr line of a task as an ERROR: a successful load must write none there."""
    env = {k: v for k, v in env_without_tpu().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run(
        [sys.executable, "-c", QUIET_LOAD_SCRIPT, f"{hub_server.url}/google/small_a/1", str(tmp_path / "cache")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert proc.returncode == 0, proc.stderr[-4000:]
    assert '"called": true' in proc.stdout
    leaked = [line for line in proc.stderr.splitlines() if any(n in line for n in NATIVE_NOTICES)]
    assert leaked == [], leaked
    # Airflow's structlog set-up takes over the root logger once the operator is imported: match either format.
    relogged = [line for line in proc.stdout.splitlines() if "TensorFlow: " in line and "native_stderr" in line]
    assert relogged, f"TensorFlow's start-up notices were dropped, not logged:\n{proc.stdout[-3000:]}"
    # TensorFlow's wheel prints its start-up notices once per shared library that carries them (twice):
    # logged as they come, the task log reads as if TensorFlow started twice.
    notices = [line.split("TensorFlow: ", 1)[1] for line in relogged]
    assert len(notices) == len(set(notices)), f"a notice logged more than once:\n{chr(10).join(relogged)}"
    assert not [n for n in notices if "absl::InitializeLog" in n], relogged
    assert not [n for n in notices if n[:1] in "IWEF" and n[1:5].isdigit()], f"glog prefixes kept: {relogged}"
    loading_lines = [line for line in proc.stdout.splitlines() if " Loading " in f" {line}" and " from " in line]
    assert len(loading_lines) == 1, loading_lines


FAKE_NATIVE_NOTICES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796537324.623661   28735 port.cc:153] oneDNN custom operations are on.\n"
    "E0000 00:00:1796537329.762739   28735 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n"
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796537329.897257   28735 port.cc:153] oneDNN custom operations are on.\n"
    "\n"
    "some other native line\n"
)


def test_native_notices_are_logged_once_each_without_the_glog_prefix(caplog: pytest.LogCaptureFixture) -> None:
    """What native code writes to fd 2 (the real descriptor) comes back as one INFO record per distinct notice."""
    from tfhub_cache.native_stderr import native_stderr_to_log

    with caplog.at_level("INFO", logger="tfhub_cache.native_stderr"), native_stderr_to_log():
        os.write(2, FAKE_NATIVE_NOTICES.encode())

    records = [r for r in caplog.records if r.name == "tfhub_cache.native_stderr"]
    assert [r.getMessage() for r in records] == [
        "TensorFlow: oneDNN custom operations are on. [port.cc:153]",
        "TensorFlow: failed call to cuInit: UNKNOWN ERROR (303) [cuda_platform.cc:52]",
        "TensorFlow: some other native line",
    ]
    assert {r.levelname for r in records} == {"INFO"}
