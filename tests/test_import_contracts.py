"""The import checks of ``make test`` catch what they are for: each violation planted in a copy fails them.

The copy is of both packages as they are, so each case first shows the copy passes, then plants one
import and shows the named check fails on it: an Airflow import from the library, a layer crossed
upwards, a cycle, a private module or a private name used from another module (also from the tests).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CHECK_IMPORTS = REPO / "scripts" / "check_imports.py"
PACKAGES = ("tfhub-cache/tfhub_cache", "airflow_provider_tfhub")


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for folder in PACKAGES:
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "tests").mkdir()
    return root


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter with the repository's contracts, over the copy (which shadows the installed packages)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "tfhub-cache"), str(root)])}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(REPO / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _check_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECK_IMPORTS), str(root)], capture_output=True, text=True, timeout=120)


def _plant(root: Path, path: str, line: str) -> None:
    target = root / path
    target.write_text(target.read_text() + f"\n{line}  # planted\n")


def test_the_checks_pass_on_the_packages_as_they_are(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    linted = _lint_imports(root)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "0 broken" in linted.stdout and str(root) in _lint_imports_origin(root)
    checked = _check_imports(root)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _lint_imports_origin(root: Path) -> str:
    """Where the copy's interpreter finds tfhub_cache: the copy, not the installed checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "tfhub-cache"), str(root)])}
    code = "import tfhub_cache, airflow_provider_tfhub; print(tfhub_cache.__file__, airflow_provider_tfhub.__file__)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=root).stdout


@pytest.mark.parametrize(
    ("path", "line", "broken"),
    [
        pytest.param(
            "tfhub-cache/tfhub_cache/handles.py",
            "import airflow",
            "tfhub_cache never imports Airflow or the provider BROKEN",
            id="airflow-import",
        ),
        pytest.param(
            "tfhub-cache/tfhub_cache/loading.py",
            "from airflow_provider_tfhub.hooks import tfhub",
            "tfhub_cache never imports Airflow or the provider BROKEN",
            id="provider-import",
        ),
        pytest.param(
            "tfhub-cache/tfhub_cache/retry.py",
            "from tfhub_cache.fetch import mirrors",
            "tfhub_cache's layers go one way",
            id="base-module-imports-fetch",
        ),
        pytest.param(
            "tfhub-cache/tfhub_cache/fetch/ranged.py",
            "from tfhub_cache.fetch import transfer",
            "no import cycles between the modules of a package BROKEN",
            id="cycle",
        ),
        pytest.param(
            "tfhub-cache/tfhub_cache/testing/models.py",
            "from tfhub_cache.cache import layout",
            "imports only base modules of the library BROKEN",
            id="testing-imports-the-cache",
        ),
    ],
)
def test_lint_imports_fails_on_a_planted_violation(tmp_path: Path, path: str, line: str, broken: str) -> None:
    root = _copy(tmp_path)
    _plant(root, path, line)
    result = _lint_imports(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert broken in " ".join(result.stdout.split()), result.stdout


def test_lint_imports_fails_on_a_private_module_imported_from_another_package(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "tfhub-cache/tfhub_cache/storage/gcs/_hidden.py").write_text("VALUE = 1\n")
    _plant(root, "tfhub-cache/tfhub_cache/storage/gcs/objects.py", "from tfhub_cache.storage.gcs import _hidden")
    assert _lint_imports(root).returncode == 0  # its own package may use it
    _plant(root, "tfhub-cache/tfhub_cache/cache/layout.py", "from tfhub_cache.storage.gcs import _hidden")
    result = _lint_imports(root)
    assert result.returncode == 1
    assert "a private module (_name) is imported only within its own package BROKEN" in result.stdout


@pytest.mark.parametrize(
    ("path", "line", "reported"),
    [
        pytest.param(
            "tfhub-cache/tfhub_cache/cache/aliases.py",
            "from tfhub_cache.fetch.transfer import _source_info",
            "imports the private name _source_info from tfhub_cache.fetch.transfer",
            id="private-function",
        ),
        pytest.param(
            "airflow_provider_tfhub/hooks/tfhub.py",
            "from tfhub_cache.storage import local\nlocal._exchange('a', 'b')",
            "uses the private name _exchange of module local",
            id="private-name-through-the-module",
        ),
        pytest.param(
            "tests/test_planted.py",
            "from tfhub_cache.storage.local import _exchange",
            "imports the private name _exchange from tfhub_cache.storage.local",
            id="private-name-in-a-test",
        ),
    ],
)
def test_the_private_name_check_fails_on_a_planted_use(tmp_path: Path, path: str, line: str, reported: str) -> None:
    root = _copy(tmp_path)
    (root / path).touch()
    _plant(root, path, line)
    result = _check_imports(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert reported in result.stdout
    assert path in result.stdout  # the finding names the file
