"""Fixtures of the library tests: staged caches and the two upstream versions of one model."""

from __future__ import annotations

import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from stage_helpers import NAMES, StagedModels, Version, used

from tfhub_cache.cache.staging import stage
from tfhub_cache.testing.models import make_archive


@pytest.fixture
def staged_models(hub: Any, handle_of: Any, cache_dir: str) -> StagedModels:
    """Four staged models in ``cache_dir``, last used 400, 300, 200 and 100 seconds ago (in NAMES order)."""
    now = time.time()
    staged: StagedModels = {}
    for age, name in zip((400, 300, 200, 100), NAMES, strict=True):
        result = stage(handle_of(name), cache_dir)
        used(cache_dir, result, now - age)
        staged[name] = dict(result)
    hub.reset_stats()
    return staged


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
