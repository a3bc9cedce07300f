"""``tfhub_cache.settings``: which value wins, every variable documented, bad values named with their source."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tfhub_cache import settings
from tfhub_cache.archive.extract import max_extracted_bytes_from_env
from tfhub_cache.errors import ConfigurationError
from tfhub_cache.fetch.mirrors import resolve_mirrors
from tfhub_cache.retry import RetryPolicy


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


# -- every variable: read in one place, documented, and never silently ignored when bad -----------

_GETTERS: dict[str, Callable[[], object]] = {
    "TFHUB_CACHE_DIR": settings.resolve_cache_dir,
    "TFHUB_MODEL_LOAD_FORMAT": settings.resolve_load_format,
    "TFHUB_LOCK_TIMEOUT": settings.resolve_lock_timeout,
    "TFHUB_MIRRORS": resolve_mirrors,
    "TFHUB_OFFLINE": settings.resolve_offline,
    "TFHUB_TOKEN": settings.token_from_env,
    "TFHUB_DOWNLOAD_CONNECTIONS": settings.download_connections,
    "TFHUB_DOWNLOAD_PART_SIZE": settings.download_part_size,
    "TFHUB_DOWNLOAD_RETRIES": settings.download_retries,
    "TFHUB_HTTP_TIMEOUT": settings.http_timeout,
    "TFHUB_MAX_EXTRACTED_BYTES": settings.max_extracted_bytes,
    "TFHUB_MAX_EXTRACTED_FILES": settings.max_extracted_files,
    "TFHUB_FSYNC": settings.fsync,
    "TFHUB_UPSTREAM_CACHE": settings.resolve_upstream_cache,
    "TFHUB_LOAD_PLAN": settings.load_plan_json,
}
#: What each getter returns for the documented default text (the table's Default column).
_DEFAULT_VALUES: dict[str, object] = {
    "TFHUB_CACHE_DIR": os.path.join(tempfile.gettempdir(), "tfhub_modules"),
    "TFHUB_MODEL_LOAD_FORMAT": "COMPRESSED",  # AUTO means COMPRESSED
    "TFHUB_MIRRORS": {},
    "TFHUB_OFFLINE": False,
    "TFHUB_TOKEN": None,
    "TFHUB_HTTP_TIMEOUT": (15.0, 60.0),
    "TFHUB_FSYNC": False,
    "TFHUB_UPSTREAM_CACHE": None,
    "TFHUB_LOAD_PLAN": None,
}
_BAD = {
    "TFHUB_CACHE_DIR": "s3://bucket/x",
    "TFHUB_MODEL_LOAD_FORMAT": "bogus",
    "TFHUB_LOCK_TIMEOUT": "soon",
    "TFHUB_MIRRORS": "not json",
    "TFHUB_OFFLINE": "maybe",
    "TFHUB_DOWNLOAD_CONNECTIONS": "many",
    "TFHUB_DOWNLOAD_PART_SIZE": "12",
    "TFHUB_DOWNLOAD_RETRIES": "lots",
    "TFHUB_HTTP_TIMEOUT": "soon",
    "TFHUB_MAX_EXTRACTED_BYTES": "1TB",
    "TFHUB_MAX_EXTRACTED_FILES": "-3",
    "TFHUB_FSYNC": "sometimes",
    "TFHUB_UPSTREAM_CACHE": "s3://bucket/x",
}
_PACKAGE = Path(settings.__file__).parent
_DOCS = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def _table() -> dict[str, dict[str, str]]:
    """The rows of docs/settings.md's variable table, by variable name."""
    rows = {}
    for line in _DOCS.read_text().splitlines():
        if not line.startswith("| `TFHUB_"):
            continue
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = {"config": cells[1], "extra": cells[2], "default": cells[3], "meaning": cells[4]}
    return rows


def _variables_in_source() -> set[str]:
    names: set[str] = set()
    for path in _PACKAGE.rglob("*.py"):
        if "testing" in path.relative_to(_PACKAGE).parts:
            continue  # the test hub's own knobs are not settings of the library
        names.update(re.findall(r"\b(TFHUB_[A-Z_]+[A-Z])\b", path.read_text()))
    return names


def test_the_settings_table_matches_the_module() -> None:
    table = _table()
    assert set(table) == set(settings.VARIABLES) == set(_GETTERS)
    for name, var in settings.VARIABLES.items():
        row = table[name]
        assert row["config"] == (var.config_key or ""), name
        assert row["extra"] == (var.connection_extra or ""), name
        assert row["default"] == var.default, name
        assert row["meaning"], name
    # every TFHUB_* name the library mentions is a documented variable (and so in the table)
    assert _variables_in_source() <= set(settings.VARIABLES)


def test_only_settings_reads_the_environment_for_tfhub_variables() -> None:
    readers = []
    for path in _PACKAGE.rglob("*.py"):
        if path.name == "settings.py" or "testing" in path.relative_to(_PACKAGE).parts:
            continue
        if re.search(r"(os\.environ|os\.getenv)[^\n]*\bTFHUB_", path.read_text()):
            readers.append(str(path.relative_to(_PACKAGE)))
    assert readers == []


@pytest.mark.parametrize("name", sorted(settings.VARIABLES))
def test_unset_variables_give_the_documented_default(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    for other in settings.VARIABLES:
        monkeypatch.delenv(other, raising=False)
    default = settings.VARIABLES[name].default
    kind: Any = type(_GETTERS[name]())  # int or float: the table's text read as the getter's type
    expected = _DEFAULT_VALUES[name] if name in _DEFAULT_VALUES else kind(default)
    assert _GETTERS[name]() == expected
    if name not in (
        "TFHUB_CACHE_DIR",
        "TFHUB_MIRRORS",
        "TFHUB_TOKEN",
        "TFHUB_UPSTREAM_CACHE",
        "TFHUB_LOAD_PLAN",
    ):  # defaults that are no value to write
        monkeypatch.setenv(name, default)
        assert _GETTERS[name]() == expected


@pytest.mark.parametrize("name", sorted(_BAD))
def test_a_bad_variable_raises_naming_it_and_its_value(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, _BAD[name])
    with pytest.raises(ConfigurationError) as exc:
        _GETTERS[name]()
    message = str(exc.value)
    assert (f"nvironment variable `{name}`" in message and repr(_BAD[name]) in message) or name == "TFHUB_MIRRORS"
    assert name in message


def test_bad_retries_and_extracted_bytes_no_longer_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both used to fall back to their defaults silently (a typo there went unnoticed)."""
    monkeypatch.setenv("TFHUB_DOWNLOAD_RETRIES", "0")
    with pytest.raises(ConfigurationError, match="`TFHUB_DOWNLOAD_RETRIES` is '0'"):
        RetryPolicy.from_env()
    monkeypatch.setenv("TFHUB_MAX_EXTRACTED_BYTES", "10G")
    with pytest.raises(ConfigurationError, match="`TFHUB_MAX_EXTRACTED_BYTES` is '10G'"):
        max_extracted_bytes_from_env()
    monkeypatch.setenv("TFHUB_MAX_EXTRACTED_BYTES", "1000")
    assert max_extracted_bytes_from_env() == 1000


def test_errors_name_where_a_bad_setting_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TFHUB_MODEL_LOAD_FORMAT", raising=False)
    with pytest.raises(ConfigurationError, match=r"'zip' \(from connection `hub_a` extra `load_format`\)"):
        settings.resolve_load_format(None, "zip", None, origins=settings.Origins(conn_id="hub_a"))
    with pytest.raises(ConfigurationError, match=r"'zip' \(from `\[tfhub\] load_format` in airflow.cfg\)"):
        settings.resolve_load_format(None, None, "zip")
    with pytest.raises(ConfigurationError, match=r"'zip' \(from flag `--load-format`\)"):
        settings.resolve_load_format("zip", origins=settings.CLI)
    with pytest.raises(ConfigurationError, match=r"'zip' \(from environment variable `AIRFLOW__TFHUB__LOAD_FORMAT`\)"):
        settings.resolve_load_format(None, None, "zip", origins=settings.CLI)
    monkeypatch.setenv("TFHUB_MODEL_LOAD_FORMAT", "bogus")
    with pytest.raises(ConfigurationError, match=r"'bogus' \(from environment variable `TFHUB_MODEL_LOAD_FORMAT`\)"):
        settings.resolve_load_format(None, None, "COMPRESSED")
    with pytest.raises(ConfigurationError, match=r"Lock timeout '-1' \(from `\[tfhub\] lock_timeout` in airflow.cfg\)"):
        settings.resolve_lock_timeout(None, "-1")
    with pytest.raises(ConfigurationError, match=r"'gs://' \(from argument `cache_dir`\) names no bucket"):
        settings.resolve_cache_dir("gs://")
