"""What users install: a wheel built from this checkout, in a venv of its own, with nothing from the repo.

The editable install every other test uses hides packaging mistakes: an undeclared dependency is
still importable (another package pulled it in), a file missing from the wheel is still on disk. So
one test builds the wheel from a copy of the sources a fresh clone has, installs it with its
dependencies into a new venv (``uv``, hard links from its cache: seconds when warm) and runs the
entry points from outside the checkout. A second one reads every import of the package and checks
that the distribution it comes from is declared in ``pyproject.toml``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path

import pytest

import airflow_provider_tfhub

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the suite runs on 3.11+, the package supports 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "airflow_provider_tfhub"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LIBRARY = REPO / "tfhub-cache"
LIBRARY_PACKAGE = LIBRARY / "tfhub_cache"
LIBRARY_PYPROJECT = tomllib.loads((LIBRARY / "pyproject.toml").read_text())
UV = Path(sys.executable).with_name("uv")

# What a fresh clone feeds the build backend (pyproject's readme and license files included).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "airflow_provider_tfhub")
# ``apache-airflow`` is the distribution providers depend on; it installs these two, whose modules
# (``airflow``, ``airflow.sdk``) the package imports.
DECLARED_THROUGH = {"apache-airflow-core": "apache-airflow", "apache-airflow-task-sdk": "apache-airflow"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_normalise(re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0]) for req in requirements}


def _clean_env(airflow_home: Path) -> dict[str, str]:
    """This process's environment without anything that points back into the checkout or its venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "PYTHON", "VIRTUAL_ENV", "TFHUB_", "UV_PYTHON"))
    }
    env.update(AIRFLOW_HOME=str(airflow_home), AIRFLOW__CORE__LOAD_EXAMPLES="False", NO_GCE_CHECK="true")
    return env


def _run(cmd: list[str | Path], *, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``uv build`` makes from a copy of the tracked sources (no build/ or egg-info of ours)."""
    work = tmp_path_factory.mktemp("packaging")
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    env = _clean_env(work / "airflow")
    _run([UV, "build", "--wheel", "--out-dir", work / "dist", src], cwd=work, env=env)
    _run([UV, "build", "--wheel", "--out-dir", work / "library-dist", LIBRARY], cwd=work, env=env)
    (built,) = (work / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Path:
    """A new venv on this interpreter with only the wheel and its declared dependencies; its bin/ dir."""
    work = wheel.parents[1]
    env = _clean_env(work / "airflow")
    venv = work / "venv"
    _run([UV, "venv", "--python", sys.executable, venv], cwd=work, env=env)
    (library_wheel,) = (work / "library-dist").glob("*.whl")
    python = venv / "bin" / "python"
    _run([UV, "pip", "install", "--python", python, wheel, library_wheel], cwd=work, env=env, timeout=600)
    return venv / "bin"


def test_wheel_ships_license_and_py_typed_but_not_the_demo(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        license_text = zf.read(f"{dist_info}/licenses/LICENSE").decode()
    assert "airflow_provider_tfhub/py.typed" in names
    assert "License-File: LICENSE" in metadata and "License-Expression: Apache-2.0" in metadata
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert f"Version: {airflow_provider_tfhub.__version__}" in metadata  # the one version source
    assert not [n for n in names if n.startswith(("scripts/", "tests/", "dags/")) or n.endswith("/demo.py")]


def test_wheel_installs_in_a_clean_venv_and_its_entry_points_work(installed: Path, tmp_path: Path) -> None:
    env = _clean_env(tmp_path / "airflow")

    help_text = _run([installed / "tfhub-cache", "--help"], cwd=tmp_path, env=env)
    assert "usage: tfhub-cache" in help_text and "stage" in help_text

    # The package is imported from the venv, not from the checkout.
    where = _run(
        [installed / "python", "-c", "import airflow_provider_tfhub as p; print(p.__file__, p.__version__)"],
        cwd=tmp_path,
        env=env,
    )
    origin, version = where.split()
    assert Path(origin).is_relative_to(installed.parent) and version == airflow_provider_tfhub.__version__

    providers = json.loads(_run([installed / "airflow", "providers", "list", "-o", "json"], cwd=tmp_path, env=env))
    ours = [p for p in providers if p["package_name"] == "airflow-provider-tfhub"]
    assert ours and ours[0]["version"] == airflow_provider_tfhub.__version__, providers


# -- declared dependencies ---------------------------------------------------------------------------------------


@cache
def _distribution_of_files() -> dict[Path, str]:
    owners: dict[Path, str] = {}
    for dist in importlib.metadata.distributions():
        for file in dist.files or ():
            if file.suffix in (".py", ".so", ".pyd"):
                owners[Path(str(dist.locate_file(file))).resolve()] = _normalise(dist.metadata["Name"])
    return owners


def _distribution_of(module: str) -> str | None:
    """The installed distribution that provides ``module`` (``None``: the standard library or ours)."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in ("airflow_provider_tfhub", "tfhub_cache"):
        return None
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{module} is imported by the package but is not installed"
    owner = _distribution_of_files().get(Path(spec.origin).resolve())
    assert owner is not None, f"no installed distribution owns {spec.origin} (module {module})"
    return owner


def _is_namespace(module: str) -> bool:
    if module.split(".")[0] in sys.stdlib_module_names or module.startswith(("airflow_provider_tfhub", "tfhub_cache")):
        return False
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.origin is None


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from google.cloud import storage``: a namespace package is no distribution, its modules are.
            if _optional_extra(node.module) is None and _is_namespace(node.module):
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return names


# Optional features: imported lazily, where the feature is used, from the extra that installs them.
OPTIONAL = {
    "tensorflow": "tensorflow",
    "isal": "fast",
    "zlib_ng": "fast",
    "airflow.providers.google": "google",
    # lineage: only inside get_openlineage_facets_on_complete, which only the OpenLineage provider calls
    "airflow.providers.openlineage": "openlineage",
    "airflow.providers.common.compat.openlineage": "openlineage",
    "openlineage": "openlineage",
    "attrs": "openlineage",
}


def _optional_extra(module: str) -> str | None:
    return next(
        (extra for prefix, extra in OPTIONAL.items() if module == prefix or module.startswith(prefix + ".")), None
    )


def _undeclared(files: list[Path], declared: set[str], extras: dict[str, list[str]]) -> dict[str, list[str]]:
    """``{distribution or extra: [where it is imported]}`` for every import that nothing declares."""
    missing: dict[str, list[str]] = {}
    for path in files:
        for module in sorted(_imports(path)):
            where = f"{path.relative_to(REPO)}: {module}"
            extra = _optional_extra(module)
            if extra is not None:
                if extra not in extras:
                    missing.setdefault(f"extra [{extra}]", []).append(where)
                continue
            dist = _distribution_of(module)
            if dist is not None and DECLARED_THROUGH.get(dist, dist) not in declared:
                missing.setdefault(dist, []).append(where)
    return missing


def test_every_distribution_the_package_imports_is_declared() -> None:
    """Runtime modules: ``dependencies`` (optional features: their extra); ``testing/`` may also use extras."""
    project = PYPROJECT["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    runtime = _requirement_names(project["dependencies"])

    assert _undeclared(sorted(PACKAGE.rglob("*.py")), runtime, extras) == {}
    assert "tfhub-cache" in runtime


def test_every_distribution_the_library_imports_is_declared() -> None:
    """The library: ``dependencies`` (optional features: their extra); ``testing/`` may also use extras."""
    project = LIBRARY_PYPROJECT["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    runtime = _requirement_names(project["dependencies"])
    with_extras = runtime | _requirement_names([req for reqs in extras.values() for req in reqs])
    testing = LIBRARY_PACKAGE / "testing"
    package_files = [p for p in sorted(LIBRARY_PACKAGE.rglob("*.py")) if testing not in p.parents]
    assert _undeclared(package_files, runtime, extras) == {}
    assert _undeclared(sorted(testing.rglob("*.py")), with_extras, extras) == {}
