"""``tfhub-cache``: every command is there, flags and output as documented, errors in one line.

The commands run in a subprocess (``python -m airflow_provider_tfhub.cli``) where they read a cache
built from the loopback hub, or in-process through ``main`` where only the output is looked at.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from airflow_provider_tfhub.cli import main

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
        sys.modules["airflow_provider_tfhub.cli.{module}"] = None  # importing it raises ModuleNotFoundError
        from airflow_provider_tfhub.cli import main
        sys.exit(main(["--help"]))
        """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc.stdout
    assert "ModuleNotFoundError" in proc.stderr and f"airflow_provider_tfhub.cli.{module}" in proc.stderr
