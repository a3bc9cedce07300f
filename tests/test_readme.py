"""The README runs as written: every ```python and ```bash/```console block, against the loopback hub.

The blocks are read from README.md itself, so the README cannot drift from what works. Nothing in
a block's text is changed: the handles it names (``https://tfhub.dev/...``, Kaggle URLs) reach the
loopback hub through mirrors, and the cache is a temporary directory, both given the way a user
would give them: ``TFHUB_MIRRORS`` and ``TFHUB_CACHE_DIR`` for the library and the CLI, and an
``AIRFLOW_CONN_TFHUB_DEFAULT`` connection (which Airflow reads before its database) for DAGs.

Each block runs in its own subprocess with a fresh cache, in an Airflow home of its own (migrated
once per module), so a block's ``airflow connections add`` never reaches the session's database
and TensorFlow never enters the pytest process. A Python block that defines DAGs is imported the
way Airflow imports a DAG file (from the dags folder, with ``DagBag``: no import error allowed) and each DAG runs with
``dag.test()``; its output must hold no ``[error]`` line. Other Python blocks run as scripts; shell
blocks run with ``bash -e``. A block that cannot run here is marked in the README, on the line
before its fence, with ``<!-- snippet: skip (reason) -->``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent

SKIP_MARK = re.compile(r"<!--\s*snippet:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->")
FENCE = re.compile(r"^```(?P<language>[\w-]*)\s*$")
RUNNABLE = ("python", "bash", "console")
#: An error line as Airflow's structured logging prints it (``[error    ] XCom not found ...``).
ERROR_LINE = re.compile(r"\[error\s*\]", re.IGNORECASE)

#: Where the README's handles are served on the loopback hub (path under the mirror prefix -> test model).
SERVED = {
    "/google/nnlm-en-dim50/2": "demo_v1",
    "/kaggle/models/google/yamnet/TensorFlow2/yamnet/1": "small_a",
}

#: Runs one Python block in a fresh interpreter: DAG files through DagBag and dag.test(), others as scripts.
RUN_PYTHON = r"""
import json, runpy, sys

path = sys.argv[1]
source = open(path).read()
if "DAG(" not in source:
    runpy.run_path(path, run_name="__main__")
    print("RESULT " + json.dumps({"kind": "script"}))
    raise SystemExit(0)

from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=path)
runs = {}
for dag_id, dag in sorted(bag.dags.items()):
    dr = dag.test()
    runs[dag_id] = {
        "state": str(dr.state),
        "tasks": {f"{ti.task_id}[{ti.map_index}]": [str(ti.state), ti.try_number] for ti in dr.get_task_instances()},
    }
errors = {str(k): str(v) for k, v in bag.import_errors.items()}
print("RESULT " + json.dumps({"kind": "dags", "import_errors": errors, "runs": runs}))
"""


@dataclass(frozen=True)
class Block:
    """One fenced block of the README: its language, first line number, text and skip reason (if marked)."""

    language: str
    line: int
    text: str
    skip_reason: str | None

    @property
    def label(self) -> str:
        first = next((ln.strip() for ln in self.text.splitlines() if ln.strip() and not ln.startswith("#")), "")
        return f"{self.language}@{self.line}:{first[:40]}"


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of ``text`` with a language, in order, each with the skip mark before it."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening or not opening.group("language"):
            i += 1
            continue
        previous = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        mark = SKIP_MARK.search(previous)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"README.md:{i + 1}: the ```{opening.group('language')} block is never closed")
        blocks.append(
            Block(opening.group("language"), i + 1, "\n".join(lines[i + 1 : end]) + "\n", mark and mark["reason"])
        )
        i = end + 1
    return blocks


def shell_script(block: Block) -> str:
    """A ```bash block as it is; a ```console block's ``$ `` lines (output lines dropped)."""
    if block.language != "console":
        return block.text
    return "\n".join(ln[2:] for ln in block.text.splitlines() if ln.startswith("$ ")) + "\n"


BLOCKS = readme_blocks(README.read_text())
RUN_BLOCKS = [b for b in BLOCKS if b.language in RUNNABLE and b.skip_reason is None]
SKIPPED_BLOCKS = [b for b in BLOCKS if b.language in RUNNABLE and b.skip_reason is not None]


@pytest.fixture(scope="module")
def readme_airflow_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An Airflow home of the README's own (SQLite, migrated once): its blocks may add connections."""
    home = tmp_path_factory.mktemp("readme-airflow")
    (home / "dags").mkdir()
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    proc = subprocess.run(
        [str(BIN / "airflow"), "db", "migrate"], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return env


@pytest.fixture(scope="module")
def readme_hub(hub_server: Any, model_archives: dict[str, Path]) -> dict[str, str]:
    """The loopback hub serving the README's handles; returns the mirrors that lead there."""
    for path, model in SERVED.items():
        hub_server.add_model(path, model_archives[model])
    return {"https://tfhub.dev": hub_server.url, "https://www.kaggle.com": f"{hub_server.url}/kaggle"}


@pytest.fixture
def block_env(
    readme_airflow_home: dict[str, str], readme_hub: dict[str, str], tmp_path: Path
) -> Iterator[dict[str, str]]:
    """The environment a block runs in: a fresh cache, the mirrors, the README's Airflow home."""
    cache = str(tmp_path / "tfhub-cache")
    mirrors = json.dumps(readme_hub)
    connection = json.dumps({"conn_type": "tfhub", "extra": {"cache_dir": cache, "mirrors": readme_hub}})
    yield {
        **os.environ,
        **readme_airflow_home,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "TFHUB_CACHE_DIR": cache,
        "TFHUB_MIRRORS": mirrors,
        "AIRFLOW_CONN_TFHUB_DEFAULT": connection,
    }


def run_python(block: Block, env: dict[str, str], workdir: Path) -> tuple[dict[str, Any], str]:
    # dag.test() runs what the DAG processor serialized from the dags folder: a DAG block goes there.
    folder = Path(env["AIRFLOW__CORE__DAGS_FOLDER"]) if "DAG(" in block.text else workdir
    snippet = folder / f"readme_line_{block.line}.py"
    snippet.write_text(block.text)
    proc = subprocess.run(
        [sys.executable, "-c", RUN_PYTHON, str(snippet)], env=env, cwd=workdir, capture_output=True, text=True
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"README.md:{block.line} failed:\n{output[-6000:]}"
    result = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(result.removeprefix("RESULT ")), output


def test_readme_has_runnable_blocks_and_every_skip_says_why() -> None:
    """The runner finds the README's snippets; a skipped one says why (and is counted here)."""
    languages = {b.language for b in RUN_BLOCKS}
    assert {"python", "bash"} <= languages, [b.label for b in BLOCKS]
    assert sum(b.language == "python" for b in RUN_BLOCKS) >= 3
    for block in SKIPPED_BLOCKS:
        assert block.skip_reason and block.skip_reason.strip(), f"README.md:{block.line}: a skip needs a reason"
    print(f"README blocks: {len(RUN_BLOCKS)} run, {len(SKIPPED_BLOCKS)} skipped")
    assert len(SKIPPED_BLOCKS) < len(RUN_BLOCKS)


def test_readme_links_point_at_files_of_this_repository() -> None:
    """A relative link of the README (docs pages, example DAGs, LICENSE...) names a file that exists."""
    targets = re.findall(r"\]\((?!https?://|#)([^)\s#]+)", README.read_text())
    assert targets
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert missing == [], f"README.md links to missing files: {missing}"


def test_block_parser_reads_fences_and_skip_marks() -> None:
    text = (
        "intro\n\n<!-- snippet: skip (needs the package index) -->\n```bash\npip install x\n```\n\n"
        "```python\nprint(1)\n```\n\n```\nplain\n```\n"
    )
    blocks = readme_blocks(text)
    assert [(b.language, b.skip_reason, b.text) for b in blocks] == [
        ("bash", "needs the package index", "pip install x\n"),
        ("python", None, "print(1)\n"),
    ]
    console = Block("console", 1, "$ tfhub-cache ls\n3 entries\n$ echo done\n", None)
    assert shell_script(console) == "tfhub-cache ls\necho done\n"


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in RUN_BLOCKS if b.language in ("bash", "console")], ids=lambda b: b.label)
def test_shell_block_runs(block: Block, block_env: dict[str, str], hub_server: Any, tmp_path: Path) -> None:
    """Runs before the Python blocks: the connection a block adds to the database must not win over
    the environment's (Airflow reads AIRFLOW_CONN_* first), or the DAG blocks would stage elsewhere."""
    before = hub_server.stats()["models"].get("/google/nnlm-en-dim50/2", {}).get("compressed", 0)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", shell_script(block)],
        env=block_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"README.md:{block.line} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    if "tfhub-cache stage" in block.text and "tfhub-cache resolve" in block.text:
        # One cache throughout: the resolve after the stage is a hit (one download), inside TFHUB_CACHE_DIR.
        after = hub_server.stats()["models"]["/google/nnlm-en-dim50/2"]["compressed"]
        assert after - before == 1, f"the hub was asked {after - before} times for the model"
        paths = [ln for ln in proc.stdout.splitlines() if ln.startswith(block_env["TFHUB_CACHE_DIR"])]
        assert paths, f"no path inside the cache was printed:\n{proc.stdout}"


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in RUN_BLOCKS if b.language == "python"], ids=lambda b: b.label)
def test_python_block_runs(block: Block, block_env: dict[str, str], tmp_path: Path) -> None:
    result, output = run_python(block, block_env, tmp_path)
    cache = Path(block_env["TFHUB_CACHE_DIR"])
    if result["kind"] == "dags":
        assert result["import_errors"] == {}, result["import_errors"]
        assert result["runs"], f"README.md:{block.line}: the block defines no DAG"
        for dag_id, run in result["runs"].items():
            assert run["state"] == "success", (dag_id, run, output[-6000:])
            for task, (state, tries) in run["tasks"].items():
                assert (state, tries) == ("success", 1), (dag_id, task, state, tries)
        errors = [ln for ln in output.splitlines() if ERROR_LINE.search(ln)]
        assert errors == [], f"README.md:{block.line}: a successful run logged errors:\n" + "\n".join(errors)
    # Whatever the block staged went into the cache the environment named, through the mirrors.
    staged = list(cache.glob("*.meta.json"))
    assert staged, f"README.md:{block.line} staged nothing into TFHUB_CACHE_DIR / the connection's cache_dir"
