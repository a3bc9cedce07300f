"""Issue 13: export for TF Serving (``<base_path>/<model_name>/<version>/``), local and gs://.

Versions, no duplicate on re-export, explicit ``--version`` (+ ``--overwrite``), ``keep_versions``,
TensorFlow loading the exported directory, hard links into the cache, pollers that must never see a
numeric directory without (all of) its model. The operator and the example DAG are tested in
``tests/provider/test_export_operator.py``.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import gcs_helpers
import pytest
from stage_helpers import run_py

from tfhub_cache.cache.staging import stage
from tfhub_cache.cli import main as cli_main
from tfhub_cache.errors import ConfigurationError, ExportError
from tfhub_cache.export import EXPORT_KEYS, export_for_serving, sidecar_name
from tfhub_cache.storage.gcs import GCSStorage


def versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()) if model_dir.exists() else []


def model_files(path: str | None) -> set[str]:
    """The files of a staged model directory, relative to it."""
    assert path is not None, "a staged model always has a path"
    return {str(p.relative_to(path)) for p in Path(path).rglob("*") if p.is_file()}


def cli_export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = cli_main(["export", *args, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else err)


def test_versions_reexport_explicit_and_keep(
    hub: Any, handle_of: Any, cache_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "serving"
    model_dir = base / "demo"
    v1 = stage(handle_of("demo_v1"), cache_dir)
    assert v1["path"] is not None

    first = export_for_serving(v1, str(base), "demo")
    assert set(EXPORT_KEYS) <= set(first)
    assert first["version"] == 1 and first["exported"] is True and first["sha256"] == v1["sha256"]
    assert first["export_path"] == str(model_dir / "1") and first["base_path"] == str(base)
    assert first["model_name"] == "demo"
    assert (model_dir / "1" / "saved_model.pb").is_file()
    # Hard links into the cache (one filesystem): no copy, same inode.
    cached, exported = Path(v1["path"]) / "saved_model.pb", model_dir / "1" / "saved_model.pb"
    assert cached.stat().st_ino == exported.stat().st_ino
    # The version dir holds only the model; the sha256 is recorded beside it, hidden.
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == sorted(p.name for p in Path(v1["path"]).iterdir())
    assert json.loads((model_dir / sidecar_name(1)).read_text())["sha256"] == v1["sha256"]
    assert sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".")) == ["1"]

    again = export_for_serving(v1, str(base), "demo")
    assert again["exported"] is False and again["version"] == 1 and versions(model_dir) == [1]

    # A different model becomes the next version (the CLI stages it first: a hub download).
    code, second = cli_export(capsys, handle_of("demo_v2"), "--base-path", str(base), "--model-name", "demo",
                              "--cache-dir", cache_dir)  # fmt: skip
    assert code == 0 and second["version"] == 2 and second["exported"] is True and versions(model_dir) == [1, 2]

    # Explicit version: written when absent, kept when it holds the same sha256...
    args = ["--base-path", str(base), "--model-name", "demo", "--cache-dir", cache_dir]
    code, five = cli_export(capsys, handle_of("demo_v1"), *args, "--version", "5")
    assert code == 0 and five["version"] == 5 and five["exported"] is True
    code, five_again = cli_export(capsys, handle_of("demo_v1"), *args, "--version", "5")
    assert code == 0 and five_again["exported"] is False
    # ...an error when it holds another model, unless --overwrite.
    code, err = cli_export(capsys, handle_of("demo_v2"), *args, "--version", "5")
    assert code == 1 and "Version 5" in err and "--overwrite" in err
    assert json.loads((model_dir / sidecar_name(5)).read_text())["sha256"] == v1["sha256"]
    code, replaced = cli_export(capsys, handle_of("demo_v2"), *args, "--version", "5", "--overwrite")
    assert code == 0 and replaced["exported"] is True and replaced["sha256"] == second["sha256"]
    assert json.loads((model_dir / sidecar_name(5)).read_text())["sha256"] == second["sha256"]

    # The highest version (5) now holds demo_v2: re-exporting it adds nothing; demo_v1 becomes 6.
    assert export_for_serving(stage(handle_of("demo_v2"), cache_dir), str(base), "demo")["version"] == 5
    kept = export_for_serving(v1, str(base), "demo", keep_versions=2)
    assert kept["version"] == 6 and kept["removed_versions"] == [1, 2] and versions(model_dir) == [5, 6]
    assert not (model_dir / sidecar_name(1)).exists()
    assert [p.name for p in model_dir.iterdir() if p.name.endswith((".tmp", ".removing"))] == []
    assert not (model_dir / ".tfhub-export.lock").exists()


def test_bad_inputs_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no 'path'"):
        export_for_serving({"handle": "x"}, str(tmp_path), "m")
    with pytest.raises(ConfigurationError, match="model_name='a/b'"):
        export_for_serving({"path": str(tmp_path)}, str(tmp_path), "a/b")
    with pytest.raises(ConfigurationError, match="version='0'"):
        export_for_serving({"path": str(tmp_path)}, str(tmp_path), "m", version="0")
    with pytest.raises(ExportError, match=r"no saved_model\.pb"):
        export_for_serving({"path": str(tmp_path)}, str(tmp_path / "out"), "m")


def test_tensorflow_loads_the_exported_version(hub: Any, handle_of: Any, cache_dir: str, tmp_path: Path) -> None:
    result = export_for_serving(stage(handle_of("demo_v2"), cache_dir), str(tmp_path / "serving"), "demo")
    out = run_py(
        f"""
        import json, tensorflow as tf
        m = tf.saved_model.load({result["export_path"]!r})
        print(json.dumps(m.signatures["serving_default"](x=tf.zeros([1, 2]))["y"].numpy().tolist()))
        """
    )
    assert json.loads(out.strip().splitlines()[-1]) == [[5.0, 5.0]]  # zeros * 2 + offset 5


def _complete_or_gone(version_dir: Path, expected: set[str]) -> bool:
    """What a poller may see: the whole model, or (already removed) nothing."""
    try:
        present = {str(p.relative_to(version_dir)) for p in version_dir.rglob("*") if p.is_file()}
    except FileNotFoundError:
        return True
    return present >= expected or not version_dir.exists()


def test_concurrent_poller_never_sees_a_partial_version(
    hub: Any, handle_of: Any, cache_dir: str, tmp_path: Path
) -> None:
    base, model_dir = tmp_path / "serving", tmp_path / "serving" / "demo"
    models = [stage(handle_of(n), cache_dir) for n in ("demo_v1", "demo_v2", "medium")]
    expected = {m["sha256"]: model_files(m["path"]) for m in models}
    stop = threading.Event()
    seen: list[str] = []
    bad: list[str] = []

    def poll() -> None:
        while not stop.is_set():
            try:
                names = os.listdir(model_dir)
            except FileNotFoundError:
                continue
            for name in names:
                if not name.isdigit():
                    continue
                vdir = model_dir / name
                if not (vdir / "saved_model.pb").exists() and vdir.exists():
                    bad.append(f"{name}: no saved_model.pb")
                elif name != "100" and not _complete_or_gone(vdir, set.intersection(*expected.values())):
                    # (an overwrite swaps 100 atomically, but a walk half-way through the old tree sees it go)
                    bad.append(f"{name}: partial")
                seen.append(name)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        for i in range(30):
            export_for_serving(models[i % 3], str(base), "demo", keep_versions=2)
            export_for_serving(models[(i + 1) % 3], str(base), "demo", version=100, overwrite=True)
    finally:
        stop.set()
        poller.join()
    assert seen and bad == []
    assert versions(model_dir)[-1] == 100 and len(versions(model_dir)) == 2


# -- gs:// ------------------------------------------------------------------------------------------
def _objects(storage: GCSStorage) -> set[str]:
    base = storage.key("") + "/"
    return {b.name[len(base) :] for b in storage.client.list_blobs(storage.bucket_name, prefix=base)}


@pytest.mark.parametrize("cache_on_gcs", [False, True], ids=["local-cache", "gcs-cache"])
def test_gcs_export_marker_last_and_versions(
    hub: Any, handle_of: Any, cache_dir: str, gcs_cache: str, cache_on_gcs: bool
) -> None:
    cache = gcs_cache if cache_on_gcs else cache_dir
    staged = stage(handle_of("medium"), cache)
    assert staged["path"] is not None
    base = f"gs://{gcs_helpers.BUCKET}/{uuid.uuid4().hex[:8]}/serving"
    model = GCSStorage(f"{base}/medium")
    files = (
        {rel for rel, _ in GCSStorage(staged["path"]).list_tree("")} if cache_on_gcs else model_files(staged["path"])
    )
    stop = threading.Event()
    bad: list[str] = []
    polls = [0]

    def poll() -> None:  # a TF Serving poller on GCS: once saved_model.pb is listed, every file must be there
        while not stop.is_set():
            names = _objects(model)
            polls[0] += 1
            for version in {n.split("/")[0] for n in names if n.split("/")[0].isdigit()}:
                have = {n[len(version) + 1 :] for n in names if n.startswith(version + "/")}
                if "saved_model.pb" in have and not have >= files:
                    bad.append(f"{version}: marker before {sorted(files - have)}")

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        first = export_for_serving(staged, base, "medium")
        again = export_for_serving(staged, base, "medium")
        third = export_for_serving(staged, base, "medium", version=3)
    finally:
        stop.set()
        poller.join()
    assert polls[0] > 0 and bad == []
    assert first["export_path"] == f"{base}/medium/1" and first["exported"] is True
    assert again["exported"] is False and third["version"] == 3
    objects = _objects(model)
    assert {n[2:] for n in objects if n.startswith("1/")} == files
    assert ".1.tfhub-export.json" in objects and ".tfhub-export.lock" not in objects
    pruned = export_for_serving(staged, base, "medium", keep_versions=1)
    assert pruned["version"] == 3 and pruned["exported"] is False and pruned["removed_versions"] == [1]
    assert not any(n.startswith("1/") or n == ".1.tfhub-export.json" for n in _objects(model))


def test_gcs_overwrite_rewrites_in_place_and_says_so(
    hub: Any, handle_of: Any, cache_dir: str, gcs_cache: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    v1, v2 = stage(handle_of("small_a"), cache_dir), stage(handle_of("small_b"), cache_dir)
    base = f"gs://{gcs_helpers.BUCKET}/{uuid.uuid4().hex[:8]}/serving"
    model = GCSStorage(f"{base}/m")
    export_for_serving(v1, base, "m", version=2)
    caplog.set_level("WARNING", logger="tfhub_cache.export")
    export_for_serving(v1, base, "m", version=2, overwrite=True)  # the same model: nothing rewritten, no warning
    export_for_serving(v1, str(tmp_path), "m", version=2)
    export_for_serving(v2, str(tmp_path), "m", version=2, overwrite=True)  # local: an atomic swap, no warning
    assert not [r for r in caplog.records if r.levelname == "WARNING"]

    done = export_for_serving(v2, base, "m", version=2, overwrite=True)
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "Overwriting version 2 in place" in warning and "version=None" in warning
    assert warning.endswith(f"{base}/m/2")
    assert done["exported"] is True and done["sha256"] == v2["sha256"]
    objects = _objects(model)
    assert {n[2:] for n in objects if n.startswith("2/")} == model_files(v2["path"])
    assert not [n for n in objects if n.endswith(".replaced") or ".replaced/" in n]  # nothing of the old tree kept
    assert json.loads(model.read_bytes(sidecar_name(2)) or b"{}")["sha256"] == v2["sha256"]
