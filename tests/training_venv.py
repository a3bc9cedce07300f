"""A training host's Python: a venv with only ``tfhub-cache[tensorflow]`` (no Airflow), built with uv.

What the TPU example's ``train_in_venv`` task runs in (``TFHUB_TRAINING_PYTHON``). Versions are pinned to
this venv's (a constraints file from ``uv pip freeze``), so uv installs from its cache, offline-fast, and
the training side runs the TensorFlow the tests built their models with.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TFHUB_CACHE_TENSORFLOW = f"{ROOT / 'tfhub-cache'}[tensorflow]"


def build_training_venv(directory: Path, also: tuple[str, ...] = ()) -> str:
    """Create ``directory/venv`` with ``tfhub-cache[tensorflow]`` (and ``also``); return its python (Airflow-free)."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv is needed to build the training venv (make install puts it into .venv)"
    directory.mkdir(parents=True, exist_ok=True)
    venv = directory / "venv"
    frozen = subprocess.run(
        [uv, "pip", "freeze", "--python", sys.executable], capture_output=True, text=True, check=True
    ).stdout
    pins = [line for line in frozen.splitlines() if "==" in line and not line.startswith(("-e", "tfhub-cache"))]
    constraints = directory / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", python, "-c", str(constraints), TFHUB_CACHE_TENSORFLOW, *also],
        check=True,
        timeout=900,
    )
    probe = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util as u; print(u.find_spec('airflow') is None, u.find_spec('tfhub_cache') is not None)",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert probe.stdout.split() == ["True", "True"], f"the training venv is not Airflow-free: {probe.stdout!r}"
    return python
