"""``overwrite=True`` never removes a version tree under a reader.

The new tree is complete before it takes the version's name (one atomic swap); the tree it
replaced stays, hidden, for ``replaced_max_age``, so a server that opened the old version (a
directory handle, a half-done load) still reads every one of its files; a later export removes it
once that age is reached (``None``: never).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tfhub_cache.cache.staging import lookup_entry, stage
from tfhub_cache.cli import main as cli_main
from tfhub_cache.export import export_for_serving
from tfhub_cache.storage import open_storage


def read_via(dir_fd: int, rel: str) -> bytes:
    with os.fdopen(os.open(rel, os.O_RDONLY, dir_fd=dir_fd), "rb") as f:
        return f.read()


def replaced_trees(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.name.endswith(".replaced"))


def test_overwrite_keeps_the_replaced_tree_for_its_readers_until_its_max_age(
    hub: Any, handle_of: Any, cache_dir: str, tmp_path: Path
) -> None:
    v1, v2 = stage(handle_of("demo_v1"), cache_dir), stage(handle_of("demo_v2"), cache_dir)
    base = tmp_path / "serving"
    model_dir = base / "demo"
    export_for_serving(v1, str(base), "demo", version=5)
    old_files = {
        p.relative_to(model_dir / "5").as_posix(): p.read_bytes() for p in (model_dir / "5").rglob("*") if p.is_file()
    }
    reader = os.open(model_dir / "5", os.O_RDONLY | os.O_DIRECTORY)  # a server in the middle of loading 5
    try:
        export_for_serving(v2, str(base), "demo", version=5, overwrite=True)
        assert {rel: read_via(reader, rel) for rel in old_files} == old_files  # the reader still sees v1, whole
    finally:
        os.close(reader)
    new_files = {
        p.relative_to(model_dir / "5").as_posix(): p.read_bytes() for p in (model_dir / "5").rglob("*") if p.is_file()
    }
    assert new_files != old_files and (model_dir / "5" / "saved_model.pb").exists()
    [replaced] = replaced_trees(model_dir)
    assert replaced.name.startswith(".5.")  # hidden: TF Serving only loads integer-named versions

    export_for_serving(v1, str(base), "demo", version=6)  # default max age (1d): kept
    assert replaced_trees(model_dir) == [replaced]
    export_for_serving(v1, str(base), "demo", version=6, replaced_max_age=None)  # never removed
    assert replaced_trees(model_dir) == [replaced]
    export_for_serving(v1, str(base), "demo", version=6, replaced_max_age="0s")
    assert replaced_trees(model_dir) == []
    assert sorted(n for n in os.listdir(model_dir) if n.isdigit()) == ["5", "6"]


def test_cli_replaced_max_age_keeps_then_removes_the_replaced_tree(
    hub: Any, handle_of: Any, cache_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "serving"
    model_dir = base / "demo"
    args = ["--base-path", str(base), "--model-name", "demo", "--cache-dir", cache_dir, "--json"]

    def export(name: str, *extra: str) -> int:
        code = cli_main(["export", handle_of(name), *args, *extra])
        capsys.readouterr()
        return code

    assert export("demo_v1", "--version", "5") == 0
    assert export("demo_v2", "--version", "5", "--overwrite", "--replaced-max-age", "0s") == 0
    [replaced] = replaced_trees(model_dir)  # the age applies to later exports, never to the tree just replaced
    an_hour_ago = time.time() - 3600
    os.utime(replaced, (an_hour_ago, an_hour_ago))
    assert export("demo_v1", "--version", "6") == 0  # default 1d
    assert export("demo_v1", "--version", "6", "--replaced-max-age", "never") == 0
    assert export("demo_v1", "--version", "6", "--replaced-max-age", "2h") == 0
    assert replaced_trees(model_dir) == [replaced]
    assert export("demo_v1", "--version", "6", "--replaced-max-age", "30m") == 0  # older than 30m: removed
    assert replaced_trees(model_dir) == []
    assert sorted(n for n in os.listdir(model_dir) if n.isdigit()) == ["5", "6"]


def test_cli_bad_replaced_max_age_fails_before_staging(
    hub: Any, handle_of: Any, cache_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    handle = handle_of("small_b")
    code = cli_main(["export", handle, "--base-path", str(tmp_path), "--model-name", "m", "--cache-dir", cache_dir,
                     "--replaced-max-age", "soon"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "--replaced-max-age" in err and "'soon'" in err and "never" in err
    assert lookup_entry(open_storage(cache_dir), handle) is None  # nothing was downloaded
    assert not (tmp_path / "m").exists()
