"""Shared test setup: an isolated Airflow home on SQLite, the loopback TF Hub, and prebuilt model archives.

Environment variables are set before anything imports Airflow. SavedModels are built by a
subprocess (TensorFlow never gets imported into the pytest process by fixtures, so tests can
assert that staging does not import it) and cached under ``.cache/test-models`` between runs.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stage_helpers import Version, manifest_of_dir

from tfhub_cache.testing.hub import HubServer
from tfhub_cache.testing.models import build_archives_in_subprocess, make_archive

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_HOME = tempfile.mkdtemp(prefix="tfhub-test-airflow-")
os.environ["AIRFLOW_HOME"] = AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{AIRFLOW_HOME}/airflow.db"
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
for _var in ("TFHUB_CACHE_DIR", "TFHUB_MODEL_LOAD_FORMAT", "TFHUB_OFFLINE", "TFHUB_TOKEN", "STORAGE_EMULATOR_HOST"):
    os.environ.pop(_var, None)

# Fixtures every suite shares: the GCS emulator and per-test gs:// caches (tests/gcs_helpers.py).
pytest_plugins = ["gcs_helpers"]

MODELS_CACHE = Path(os.environ.get("TFHUB_TEST_MODELS", ROOT / ".cache" / "test-models"))

#: name -> build_saved_model kwargs; y = x * scale + offset
MODEL_SPECS: dict[str, dict[str, Any]] = {
    "demo_v1": {"scale": 2.0, "offset": 1.0},
    "demo_v2": {"scale": 2.0, "offset": 5.0},
    "small_a": {"scale": 3.0, "offset": 0.5},
    "small_b": {"scale": 0.5, "offset": -1.0},
    "medium": {"scale": 1.0, "offset": 2.0, "num_params": 2_000_000, "seed": 1},
}


def build_archives(specs: dict[str, dict[str, Any]], root: Path = MODELS_CACHE) -> dict[str, Path]:
    """Build (once) the archives of ``specs`` in a subprocess; return name -> archive path."""
    return build_archives_in_subprocess(root, specs)


@pytest.fixture(scope="session")
def model_archives() -> dict[str, Path]:
    return build_archives(MODEL_SPECS)


@pytest.fixture(scope="session")
def hub_server(model_archives: dict[str, Path]) -> Iterator[Any]:
    """The loopback hub, serving ``/google/<name>/1`` for every archive in :data:`MODEL_SPECS`."""
    from tfhub_cache.testing.hub import HubServer

    server = HubServer()
    server.start()
    for name, archive in model_archives.items():
        server.add_model(
            f"/google/{name}/1", archive, uncompressed_location=f"gs://tfhub-modules/google/{name}/1/uncompressed"
        )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hub(hub_server: Any, model_archives: dict[str, Path]) -> Any:
    """The session hub with faults cleared, plain loopback (no WAN model), stats reset and the original
    archives registered."""
    hub_server.clear_faults()
    hub_server.set_network()
    for name, archive in model_archives.items():
        hub_server.add_model(
            f"/google/{name}/1", archive, uncompressed_location=f"gs://tfhub-modules/google/{name}/1/uncompressed"
        )
    hub_server.reset_stats()
    return hub_server


@pytest.fixture
def handle_of(hub: Any) -> Any:
    """``handle_of("demo_v1")`` -> ``http://127.0.0.1:PORT/google/demo_v1/1``."""
    return lambda name: f"{hub.url}/google/{name}/1"


@pytest.fixture
def cache_dir(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


@pytest.fixture(scope="module")
def medium_reference(model_archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The medium model's files as a plain tarfile extraction sees them (independent of our extractor)."""
    target = tmp_path_factory.mktemp("medium-reference")
    with tarfile.open(model_archives["medium"]) as tar:
        tar.extractall(target, filter="data")
    return manifest_of_dir(target)


@pytest.fixture(scope="session")
def versions(model_archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Version]:
    """demo_v1 / demo_v2 (offset 1 vs 5) plus ``assets/version.txt``, re-archived like tfhub.dev does."""
    root = tmp_path_factory.mktemp("versions")
    result = {}
    for tag, name in (("v1", "demo_v1"), ("v2", "demo_v2")):
        src = root / tag / "model"
        src.mkdir(parents=True)
        with tarfile.open(model_archives[name]) as tar:
            tar.extractall(src, filter="data")
        (src / "assets").mkdir(exist_ok=True)
        (src / "assets" / "version.txt").write_text(tag)
        archive = make_archive(src, root / tag / "model.tar.gz")
        files = {p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*") if p.is_file()}
        result[tag] = Version(tag, archive, files)
    assert result["v1"].files["saved_model.pb"]  # a real SavedModel, not a placeholder
    differing = {r for r in result["v1"].files if result["v1"].files[r] != result["v2"].files.get(r)}
    assert {"assets/version.txt", "variables/variables.data-00000-of-00001"} <= differing
    return result


@pytest.fixture
def mirror(model_archives: dict[str, Path]) -> Any:
    """A loopback hub playing the corporate mirror of tfhub.dev (model ``/google/x/1``)."""
    with HubServer() as server:
        server.add_model("/google/x/1", model_archives["demo_v1"], uncompressed_location="gs://mirror-b/google/x/1")
        yield server
