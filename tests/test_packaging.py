"""What users install: the two distributions ``make dist`` builds, each in a venv of its own, nothing from the repo.

The editable install every other test uses hides packaging mistakes: an undeclared dependency is
still importable (another package pulled it in), a file missing from the wheel is still on disk. So
``make dist`` runs on a copy of the sources a fresh clone has (its build output must not mention a
deprecation), and the wheels go into new venvs (``uv``, hard links from its cache: seconds when
warm): the ``tfhub-cache`` wheel alone, where Airflow must be absent and the CLI and the load plan
must work against the loopback hub, and the provider wheel with it, where Airflow lists the
provider. Other tests read every import of each package and check that the distribution it comes
from is declared in that package's own ``pyproject.toml``.
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
import tarfile
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import airflow_provider_tfhub
import tfhub_cache
from airflow_provider_tfhub.get_provider_info import get_provider_info

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

# What a fresh clone feeds ``make dist`` (pyproject's readme and license files included).
SOURCES = ("Makefile", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "airflow_provider_tfhub", "tfhub-cache")
VERSION = airflow_provider_tfhub.__version__
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


def _run(cmd: list[str | Path], *, cwd: Path, env: dict[str, str], timeout: float = 300, stderr: bool = False) -> str:
    """``cmd``'s stdout (and its stderr too with ``stderr=True``); fail with both when it fails."""
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr if stderr else done.stdout


@dataclass(frozen=True)
class Dist:
    """What ``make dist`` left in its output directory, and what it printed on the way."""

    folder: Path
    log: str

    def one(self, pattern: str) -> Path:
        (found,) = self.folder.glob(pattern)
        return found


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """``make dist`` on a copy of the tracked sources (no build/, egg-info or venv of ours), with our ``uv``."""
    work = tmp_path_factory.mktemp("packaging")
    src = work / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    env = _clean_env(work / "airflow")
    venv = Path(sys.executable).parents[1]  # the Makefile's VENV: its uv builds, nothing is installed there
    log = _run(["make", "-C", src, "dist", f"VENV={venv}", f"DIST={work / 'dist'}"], cwd=work, env=env, stderr=True)
    return Dist(work / "dist", log)


def _venv(work: Path, *wheels: Path) -> Path:
    """A new venv on this interpreter with only ``wheels`` and their declared dependencies; its bin/ dir."""
    env = _clean_env(work / "airflow")
    venv = work / "venv"
    _run([UV, "venv", "--python", sys.executable, venv], cwd=work, env=env)
    _run([UV, "pip", "install", "--python", venv / "bin" / "python", *wheels], cwd=work, env=env, timeout=600)
    return venv / "bin"


@pytest.fixture(scope="module")
def installed(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The provider wheel and the library wheel, as an Airflow deployment installs them."""
    return _venv(
        tmp_path_factory.mktemp("provider-venv"),
        dist.one("airflow_provider_tfhub-*.whl"),
        dist.one("tfhub_cache-*.whl"),
    )


@pytest.fixture(scope="module")
def library_installed(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The library wheel alone, as a training image installs it."""
    return _venv(tmp_path_factory.mktemp("library-venv"), dist.one("tfhub_cache-*.whl"))


def _metadata(wheel: Path) -> tuple[set[str], str, str]:
    """The wheel's file names, its METADATA and its LICENSE text."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        return names, zf.read(f"{dist_info}/METADATA").decode(), zf.read(f"{dist_info}/licenses/LICENSE").decode()


def test_one_version_for_both_distributions_and_the_pin_between_them() -> None:
    assert tfhub_cache.__version__ == airflow_provider_tfhub.__version__
    project = PYPROJECT["project"]
    pins = [req for req in project["dependencies"] if _requirement_names([req]) == {"tfhub-cache"}]
    assert pins == [f"tfhub-cache=={VERSION}"]
    # The extras that reach into the library pin the same version.
    library_extras = [
        req for reqs in project["optional-dependencies"].values() for req in reqs if req.startswith("tfhub-cache")
    ]
    assert library_extras and all(req.endswith(f"=={VERSION}") for req in library_extras), library_extras


def test_make_dist_writes_both_wheels_and_sdists_without_a_deprecation_warning(dist: Dist) -> None:
    # (uv also leaves a .gitignore there, so that the folder is never committed)
    assert sorted(p.name for p in dist.folder.iterdir() if not p.name.startswith(".")) == [
        f"airflow_provider_tfhub-{VERSION}-py3-none-any.whl",
        f"airflow_provider_tfhub-{VERSION}.tar.gz",
        f"tfhub_cache-{VERSION}-py3-none-any.whl",
        f"tfhub_cache-{VERSION}.tar.gz",
    ]
    assert "Building wheel" in dist.log  # the backend's own output is in the log, so its warnings would be too
    assert [line for line in dist.log.splitlines() if "deprecat" in line.lower()] == []


@pytest.mark.parametrize(
    ("sdist", "readme_title"),
    [("airflow_provider_tfhub", "# airflow-provider-tfhub"), ("tfhub_cache", "# tfhub-cache")],
)
def test_each_sdist_carries_its_license_and_its_own_readme(dist: Dist, sdist: str, readme_title: str) -> None:
    with tarfile.open(dist.one(f"{sdist}-*.tar.gz")) as tar:
        root = f"{sdist}-{VERSION}"
        names = set(tar.getnames())
        readme = tar.extractfile(f"{root}/README.md")
        license_file = tar.extractfile(f"{root}/LICENSE")
        assert readme is not None and license_file is not None
        assert readme.read().decode().startswith(readme_title)
        assert b"Apache License" in license_file.read()
    assert not [n for n in names if n.startswith(f"{root}/tests/")]


def test_wheels_ship_license_and_py_typed_but_not_the_demo(dist: Dist) -> None:
    for package in ("airflow_provider_tfhub", "tfhub_cache"):
        names, metadata, license_text = _metadata(dist.one(f"{package}-*.whl"))
        assert f"{package}/py.typed" in names
        assert "License-File: LICENSE" in metadata and "License-Expression: Apache-2.0" in metadata
        assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
        assert f"Version: {VERSION}" in metadata  # the one version source
        assert not [n for n in names if n.startswith(("scripts/", "tests/", "dags/")) or n.endswith("/demo.py")]


def test_the_provider_wheel_requires_the_library_of_its_own_version(dist: Dist) -> None:
    _names, provider, _license = _metadata(dist.one("airflow_provider_tfhub-*.whl"))
    _names, library, _license = _metadata(dist.one("tfhub_cache-*.whl"))
    assert f"Requires-Dist: tfhub-cache=={VERSION}\n" in provider
    assert "airflow" not in "".join(line for line in library.splitlines() if line.startswith("Requires-Dist:"))


def test_wheel_installs_in_a_clean_venv_and_its_entry_points_work(installed: Path, tmp_path: Path) -> None:
    env = _clean_env(tmp_path / "airflow")

    help_text = _run([installed / "tfhub-cache", "--help"], cwd=tmp_path, env=env)
    assert "usage: tfhub-cache" in help_text and "stage" in help_text

    # The packages are imported from the venv, not from the checkout.
    where = _run(
        [
            installed / "python",
            "-c",
            "import airflow_provider_tfhub as p, tfhub_cache as c; print(p.__file__, c.__file__)",
        ],
        cwd=tmp_path,
        env=env,
    )
    assert all(Path(origin).is_relative_to(installed.parent) for origin in where.split()), where

    providers = json.loads(_run([installed / "airflow", "providers", "list", "-o", "json"], cwd=tmp_path, env=env))
    ours = [p for p in providers if p["package_name"] == "airflow-provider-tfhub"]
    assert ours and ours[0]["version"] == VERSION, providers
    # Airflow strips "_", "`", "<", ">" and a final "." from descriptions as reStructuredText:
    # what it shows must be the description as written.
    assert ours[0]["description"] == get_provider_info()["description"]


def test_the_library_wheel_alone_stages_from_the_hub_and_plans_the_load_without_airflow(
    library_installed: Path, handle_of: Any, tmp_path: Path
) -> None:
    env = _clean_env(tmp_path / "airflow")
    python = library_installed / "python"

    no_airflow = subprocess.run([python, "-c", "import airflow"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert no_airflow.returncode != 0 and "No module named 'airflow'" in no_airflow.stderr
    distributions = _run(
        [python, "-c", "import importlib.metadata as m; print([d.metadata['Name'] for d in m.distributions()])"],
        cwd=tmp_path,
        env=env,
    )
    assert "apache-airflow" not in distributions and "tfhub-cache" in distributions

    handle, cache_dir = handle_of("small_a"), tmp_path / "cache"
    staged = json.loads(
        _run(
            [library_installed / "tfhub-cache", "stage", handle, "--cache-dir", cache_dir, "--json"],
            cwd=tmp_path,
            env=env,
        )
    )
    assert staged["handle"] == handle and staged["downloaded"] is True
    assert (Path(staged["path"]) / "saved_model.pb").is_file() and Path(staged["path"]).is_relative_to(cache_dir)

    code = (
        "import json, sys\n"
        "from tfhub_cache.loading import build_plan\n"
        "plan = build_plan(json.loads(sys.argv[1]), tpu=False)\n"
        "print(json.dumps({'plan': plan, 'tensorflow': 'tensorflow' in sys.modules}))\n"
    )
    planned = json.loads(_run([python, "-c", code, json.dumps(staged)], cwd=tmp_path, env=env))
    assert planned["plan"]["path"] == staged["path"] and planned["plan"]["handle"] == handle
    assert planned["tensorflow"] is False  # planning needs no TensorFlow (the image may not have it yet)


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
    # Training images install the library alone: it neither declares nor imports Airflow, not even in an extra.
    assert not [name for name in with_extras if "airflow" in name], with_extras
    airflow_imports = {
        f"{path.relative_to(REPO)}: {module}"
        for path in sorted(LIBRARY_PACKAGE.rglob("*.py"))
        for module in _imports(path)
        if module.split(".")[0] == "airflow"
    }
    assert airflow_imports == set()
