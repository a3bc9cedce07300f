"""``core/settings.py``: which value wins (argument > connection > environment > config > default)."""

from __future__ import annotations

import os
import tempfile

import pytest

from tfhub_cache import settings
from tfhub_cache.errors import ConfigurationError


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TFHUB_CACHE_DIR", raising=False)
    assert settings.resolve_cache_dir() == os.path.join(tempfile.gettempdir(), "tfhub_modules")
    assert settings.resolve_cache_dir(None, None, "/cfg") == "/cfg"
    monkeypatch.setenv("TFHUB_CACHE_DIR", "/env")
    assert settings.resolve_cache_dir(None, None, "/cfg") == "/env"
    assert settings.resolve_cache_dir(None, "/conn", "/cfg") == "/conn"
    assert settings.resolve_cache_dir("/arg", "/conn", "/cfg") == "/arg"
    assert settings.resolve_cache_dir("gs://b/p/") == "gs://b/p"
    with pytest.raises(ConfigurationError, match="unsupported scheme"):
        settings.resolve_cache_dir("s3://b/p")


def test_load_format_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TFHUB_MODEL_LOAD_FORMAT", raising=False)
    assert settings.resolve_load_format() == "COMPRESSED"
    assert settings.resolve_load_format(None, None, "uncompressed") == "UNCOMPRESSED"
    monkeypatch.setenv("TFHUB_MODEL_LOAD_FORMAT", "COMPRESSED")
    assert settings.resolve_load_format(None, None, "UNCOMPRESSED") == "COMPRESSED"
    assert settings.resolve_load_format(None, "UNCOMPRESSED") == "UNCOMPRESSED"
    assert settings.resolve_load_format("AUTO", "UNCOMPRESSED") == "COMPRESSED"
    with pytest.raises(ConfigurationError, match=r"Load format 'zipped' \(from argument `load_format`\) is not one of"):
        settings.resolve_load_format("zipped")
