"""Fixtures of the library tests: staged caches and the two upstream versions of one model."""

from __future__ import annotations

import time
from typing import Any

import pytest
from stage_helpers import NAMES, StagedModels, used

from tfhub_cache.cache.staging import stage


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
