"""Fail when a ``_private`` name of one of our modules is used from another module.

import-linter (``lint-imports``, configured in pyproject.toml) checks the layers, the cycles, the
independence from Airflow and private *modules*; it cannot see names. This check reads the source
(AST) of both packages and of the tests and reports, as ``path:line: what``:

* ``from our.module import _name`` (a function, class or constant kept private by its module);
* ``import our._module`` / ``from our.package import _module`` (a private module);
* ``module._name`` where ``module`` was imported from our packages (reaching in through the module).

A leading underscore is the module's way of saying "mine": code elsewhere that needs it should get a
public name (or the module a public function that does what is needed). Dunder names (``__all__``,
``__version__``) are not private. Third-party private names are not checked here; the one adapter
that uses google-cloud-storage's is held to it by tests/test_rules.py.

Usage: ``python scripts/check_imports.py [ROOT]`` (default: this checkout); exit status 1 on a finding.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: (import name, folder that holds it, relative to the root), the packages whose private names are guarded.
PACKAGES = (("tfhub_cache", "tfhub-cache/tfhub_cache"), ("airflow_provider_tfhub", "airflow_provider_tfhub"))
#: Where code that may import from those packages lives (the packages themselves, and their users here).
SCANNED = ("tfhub-cache/tfhub_cache", "airflow_provider_tfhub", "tests", "ui_tests", "scripts", "benchmarks", "dags")


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_names(root: Path) -> dict[str, Path]:
    """Every module of :data:`PACKAGES` under ``root``: dotted name -> file."""
    modules: dict[str, Path] = {}
    for package, folder in PACKAGES:
        base = root / folder
        for path in base.rglob("*.py"):
            parts = [package, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _module_of(path: Path, modules: dict[str, Path]) -> str | None:
    for name, file in modules.items():
        if file == path:
            return name
    return None


def _resolve(node: ast.ImportFrom, current: str | None, is_package: bool) -> str:
    """The absolute module of ``from ... import``, relative imports included."""
    if not node.level:
        return node.module or ""
    base = (current or "").split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _ours(module: str) -> bool:
    return any(module == package or module.startswith(package + ".") for package, _ in PACKAGES)


def check_file(path: Path, modules: dict[str, Path]) -> Iterator[Finding]:
    tree = ast.parse(path.read_text(), filename=str(path))
    current = _module_of(path, modules)
    aliases: set[str] = set()  # local names bound to one of our modules
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _ours(alias.name):
                    continue
                private = [part for part in alias.name.split(".") if is_private(part)]
                if private:
                    yield Finding(path, node.lineno, f"imports the private module {alias.name}")
                aliases.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(node, current, path.name == "__init__.py")
            if not _ours(source):
                continue
            if any(is_private(part) for part in source.split(".")):
                if source != current and not (current or "").startswith(source.rsplit(".", 1)[0] + "."):
                    yield Finding(path, node.lineno, f"imports from the private module {source}")
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if full in modules:
                    aliases.add(alias.asname or alias.name)
                if is_private(alias.name) and source != current:
                    kind = "module" if full in modules else "name"
                    yield Finding(path, node.lineno, f"imports the private {kind} {alias.name} from {source}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and is_private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            yield Finding(path, node.lineno, f"uses the private name {node.attr} of module {node.value.id}")


def check(root: Path) -> list[Finding]:
    modules = module_names(root)
    findings: list[Finding] = []
    for path in check_sources(root):
        findings.extend(check_file(path, modules))
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args(argv)
    findings = check(args.root.resolve())
    for finding in findings:
        print(finding.__str__().replace(str(args.root.resolve()) + "/", ""))
    if findings:
        print(
            f"{len(findings)} private name(s) used from another module: give them a public name in their "
            "module (or a public function that does what the caller needs).",
            file=sys.stderr,
        )
        return 1
    print(f"No private names used across modules ({len(check_sources(args.root.resolve()))} files checked).")
    return 0


def check_sources(root: Path) -> list[Path]:
    """The files :data:`SCANNED` holds under ``root`` (a missing folder holds none)."""
    return sorted(
        path
        for folder in SCANNED
        if (root / folder).is_dir()
        for path in (root / folder).rglob("*.py")
        if "__pycache__" not in path.parts and ".venv" not in path.parts
    )


if __name__ == "__main__":
    sys.exit(main())
