"""One rule, one place: each rule that used to be written in several modules has a single home.

These read the package's source (as text or AST) where a behaviour test could not tell a second
copy from the first: a copy behaves the same until someone changes only one of them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from airflow_provider_tfhub.get_provider_info import get_provider_info
from tfhub_cache import settings
from tfhub_cache.errors import InvalidHandleError
from tfhub_cache.handles import require_cacheable, url_scheme
from tfhub_cache.responses import TRANSIENT_STATUSES, html_page_error, is_permanent
from tfhub_cache.settings import DEFAULT_LOCK_TIMEOUT

REPO = Path(__file__).resolve().parents[1]
#: Both distributions' packages; paths below are relative to these roots (``tfhub_cache/...``).
ROOTS = (REPO / "airflow_provider_tfhub", REPO / "tfhub-cache" / "tfhub_cache")
#: The test servers imitate hubs and GCS; they are not the provider's rules.
SOURCES = sorted(p for root in ROOTS for p in root.rglob("*.py") if "testing" not in p.relative_to(root).parts)


def _relative(path: Path) -> str:
    """``tfhub_cache/responses.py`` or ``airflow_provider_tfhub/hooks/tfhub.py``."""
    root = next(root for root in ROOTS if path.is_relative_to(root))
    return f"{root.name}/{path.relative_to(root)}"


def _where(pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return [_relative(p) for p in SOURCES if regex.search(p.read_text())]


def test_the_package_sources_are_found() -> None:
    assert len(SOURCES) > 40 and ROOTS[1] / "responses.py" in SOURCES


def test_private_internals_of_google_cloud_storage_are_used_only_by_its_adapter() -> None:
    private_attrs = {"_http", "_connection", "_credentials"}
    users = set()
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            reached = (
                isinstance(node, ast.Attribute)
                and node.attr in private_attrs
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")
            )
            by_name = isinstance(node, ast.Constant) and node.value in private_attrs
            imported = (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("google.")
                and any(alias.name.startswith("_") for alias in node.names)
            )
            if reached or by_name or imported:
                users.add(_relative(path))
    assert users == {"tfhub_cache/storage/gcs/client_adapter.py"}


def test_transient_statuses_are_listed_once() -> None:
    assert _where(r"\b408\b.*\b429\b") == ["tfhub_cache/responses.py"]
    assert TRANSIENT_STATUSES == {408, 429, 500, 502, 503, 504}
    assert not is_permanent(503) and not is_permanent(429) and is_permanent(404) and not is_permanent(None)


def test_the_html_instead_of_an_archive_check_is_written_once() -> None:
    assert _where(r"text/html") == ["tfhub_cache/responses.py"]
    assert html_page_error("h", "text/html; charset=utf-8", 200) is not None
    assert html_page_error("h", "application/gzip", 200) is None


def test_a_url_scheme_is_recognised_in_one_place() -> None:
    assert _where(r"A-Za-z0-9\+") == ["tfhub_cache/handles.py"]
    assert (url_scheme("GS://b/x"), url_scheme("/data/x"), url_scheme("file:///x")) == ("gs", "", "file")


def test_the_sinks_share_one_aborted_marker() -> None:
    assert _where(r"class \w*Abort\w*\(") == ["tfhub_cache/storage/base.py"]


def test_the_upload_retries_have_no_backoff_of_their_own() -> None:
    assert _where(r"2 ?\*\* ?attempt") == ["tfhub_cache/retry.py"]  # RetryPolicy.delay


def test_the_lock_default_is_one_constant() -> None:
    assert _where(r'(?im)^.*(lock.*\b600\b|\b600\b.*lock|"600").*$') == ["tfhub_cache/settings.py"]
    option = get_provider_info()["config"]["tfhub"]["options"]["lock_timeout"]
    assert option["default"] == option["example"] == f"{DEFAULT_LOCK_TIMEOUT:g}"


def test_the_lock_default_applies_when_nothing_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TFHUB_LOCK_TIMEOUT", raising=False)
    assert settings.resolve_lock_timeout() == DEFAULT_LOCK_TIMEOUT


def test_completeness_is_decided_in_one_place() -> None:
    assert _where(r"storage\.has_file\(|target\.has_file\(") == ["tfhub_cache/cache/layout.py"]


def test_a_local_directory_is_refused_by_one_function(tmp_path: Path) -> None:
    assert _where(r'kind == "local_dir"') == [
        "tfhub_cache/cache/entries.py",
        "tfhub_cache/cache/staging.py",
        "tfhub_cache/handles.py",
    ]  # staging and is_cached use it in place
    with pytest.raises(InvalidHandleError, match="is a local directory: it is used in place and never cached"):
        require_cacheable(str(tmp_path))
    assert require_cacheable("tfhub.dev/google/m/1").text == "https://tfhub.dev/google/m/1"


def test_gcs_trees_are_written_with_the_markers_last_in_one_place() -> None:
    # GCSObjects.write_tree (markers off, files, stale off, markers last) and delete_tree_keys (markers first)
    # serve the cache's views and clones, the tree sink's commit and export (publish and remove).
    assert _where(r"not in MODEL_MARKERS") == ["tfhub_cache/storage/gcs/objects.py"]
    assert _where(r"\+ m for m in MODEL_MARKERS") == ["tfhub_cache/storage/gcs/objects.py"]


def test_the_gcs_rewrite_loop_is_written_once() -> None:
    assert _where(r"\.rewrite\([^)]*token=") == ["tfhub_cache/storage/gcs/objects.py"]  # copy_object


def test_renameat2_and_its_rename_fallback_are_written_once() -> None:
    assert _where(r"renameat2|RENAME_EXCHANGE") == ["tfhub_cache/storage/local.py"]
    local = (ROOTS[1] / "storage" / "local.py").read_text()
    assert local.count("_exchange(") == 2  # its definition and exchange_or_rename, which everything else calls


def test_the_hard_link_errnos_are_listed_once() -> None:
    assert _where(r"errno\.EXDEV") == ["tfhub_cache/storage/local.py"]
    assert (ROOTS[1] / "storage" / "local.py").read_text().count("errno.EXDEV") == 1  # NO_HARD_LINK_ERRNOS


def test_a_hub_is_addressed_through_one_helper() -> None:
    # mirror URL -> format query -> token host -> HttpSource: fetch.transfer.hub_url / hub_source.
    assert _where(r"with_format_query\(") == ["tfhub_cache/fetch/transfer.py", "tfhub_cache/handles.py"]
    assert _where(r"mirrors_mod\.rewrite\(|mirrors\.rewrite\(") == ["tfhub_cache/fetch/transfer.py"]
    assert _where(r"urlsplit\(fetch_url\)\.netloc") == ["tfhub_cache/fetch/transfer.py"]  # the token's host
    assert _where(r"\bhub_source\(") == [
        "tfhub_cache/cache/staging.py",
        "tfhub_cache/fetch/transfer.py",
        "tfhub_cache/fetch/uncompressed.py",
        "tfhub_cache/fetch/update_check.py",
    ]


def test_iso_times_are_written_and_read_in_one_module() -> None:
    assert _where(r"isoformat\(") == ["tfhub_cache/timestamps.py"]


def test_a_local_dir_or_gs_bucket_is_checked_in_one_place() -> None:
    assert _where(r"names no bucket") == ["tfhub_cache/locations.py"]
    assert _where(r"unsupported scheme; ") == ["tfhub_cache/locations.py"]
    assert _where(r"len\(\"gs://\"\)|len\(GS_PREFIX\)") == ["tfhub_cache/locations.py"]  # splitting a gs:// URL


def test_export_goes_through_the_storage_interface() -> None:
    """No backend test, cast or filesystem call in export: the storages publish and remove trees."""
    source = (ROOTS[1] / "export.py").read_text()
    code = ast.parse(source)
    strings = [
        node.value
        for node in ast.walk(code)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("gs://")
    ]
    assert strings == []
    assert not re.search(r"os\.rename|shutil\.|: Any = self|\.bucket\b|\.key\(|delete_keys|_exchange", source)
