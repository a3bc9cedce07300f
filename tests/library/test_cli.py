"""``tfhub-cache``: every command is there, flags and output as documented, errors in one line.

The commands run in a subprocess (``python -m tfhub_cache.cli``) where they read a cache
built from the loopback hub, or in-process through ``main`` where only the output is looked at.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from stage_helpers import NAMES, StagedModels

from tfhub_cache.cache.inventory import list_entries
from tfhub_cache.cli import main
from tfhub_cache.storage.local import LocalStorage

COMMANDS = ("stage", "resolve", "ls", "verify", "prune", "export")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_registered(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: tfhub-cache {command} ")


@pytest.mark.parametrize("module", ["stage", "lifecycle", "export"])
def test_a_command_module_that_cannot_be_imported_fails_loudly(module: str) -> None:
    """A broken import must not silently remove commands (it once did, through importlib)."""
    code = f"""
        import sys
        sys.modules["tfhub_cache.cli.{module}"] = None  # importing it raises ModuleNotFoundError
        from tfhub_cache.cli import main
        sys.exit(main(["--help"]))
        """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc.stdout
    assert "ModuleNotFoundError" in proc.stderr and f"tfhub_cache.cli.{module}" in proc.stderr


# -- ls, verify, prune on a cache of four staged models -------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TFHUB_", "AIRFLOW__TFHUB__"))}
    return subprocess.run(
        [sys.executable, "-m", "tfhub_cache.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_ls_table_and_json(staged_models: StagedModels, cache_dir: str) -> None:
    table = cli("ls", "--cache-dir", cache_dir)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"{cache_dir}: 4 entries")
    assert lines[1].split() == ["STATE", "SIZE", "FILES", "LAST", "USED", "STAGED", "ETAG", "REVISION", "HANDLE"]
    assert lines[2].startswith("complete") and lines[2].endswith(staged_models["demo_v2"]["handle"])

    listed = json.loads(cli("ls", "--json", "--cache-dir", cache_dir).stdout)
    assert [e["handle"] for e in listed] == [staged_models[n]["handle"] for n in reversed(NAMES)]
    assert {"handle", "size", "files", "staged_at", "last_used", "etag", "state"} <= set(listed[0])


def test_cli_verify_exit_codes(staged_models: StagedModels, cache_dir: str) -> None:
    assert cli("verify", "--cache-dir", cache_dir).returncode == 0
    Path(staged_models["demo_v1"]["path"], "saved_model.pb").unlink()

    damaged = cli("verify", "--cache-dir", cache_dir)
    assert damaged.returncode == 1
    assert f"missing: {staged_models['demo_v1']['path']}/saved_model.pb" in damaged.stdout
    assert cli("verify", staged_models["small_a"]["handle"], "--cache-dir", cache_dir).returncode == 0
    report = json.loads(cli("verify", staged_models["demo_v1"]["handle"], "--json", "--cache-dir", cache_dir).stdout)
    assert report["ok"] is False


def test_cli_prune(staged_models: StagedModels, cache_dir: str) -> None:
    keep = staged_models["demo_v2"]["handle"]
    dry = cli("prune", "--cache-dir", cache_dir, "--max-total-bytes", "0", "--keep", keep, "--dry-run", "--json")
    assert dry.returncode == 1  # over budget: the kept model stays
    assert len(json.loads(dry.stdout)["removed"]) == 3 and len(list_entries(LocalStorage(cache_dir))) == 4

    real = cli("prune", "--cache-dir", cache_dir, "--max-age", "150s", "--keep", keep)
    assert real.returncode == 0, real.stderr
    assert "Freed" in real.stdout and staged_models["demo_v1"]["handle"] in real.stdout
    assert [e["handle"] for e in list_entries(LocalStorage(cache_dir))] == [keep]


def test_cli_reports_bad_input_in_one_line(cache_dir: str) -> None:
    bad = cli("prune", "--cache-dir", cache_dir, "--max-age", "7x")
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "tfhub-cache: error: Age '7x' is not understood; use seconds or a number with s, m, h, d or w, e.g. 90s, "
        "30m, 12h, 7d."
    ]


# -- stage and resolve ----------------------------------------------------------------------------------


def test_cli_stage_resolve_and_errors(hub: Any, handle_of: Any, cache_dir: str) -> None:
    exe = [sys.executable, "-m", "tfhub_cache.cli"]
    handle = handle_of("demo_v1")
    out = subprocess.run(
        [*exe, "stage", handle, "--cache-dir", cache_dir, "--json"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    staged = json.loads(out.stdout)
    assert staged["downloaded"] is True and staged["handle"] == handle
    resolved = subprocess.run(
        [*exe, "resolve", handle, "--cache-dir", cache_dir, "-q"], capture_output=True, text=True, timeout=120
    )
    assert resolved.stdout == staged["path"] + "\n"
    failed = subprocess.run(
        [*exe, "stage", f"{hub.url}/google/nope/1", "--cache-dir", cache_dir],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith("tfhub-cache: error:") and "HTTP 404" in failed.stderr
