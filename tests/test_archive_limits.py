"""Archive limits and naming errors: a cap on files created (``TFHUB_MAX_EXTRACTED_FILES`` /
``max_extracted_files``), checked while streaming with nothing left behind, and errors that name
the member and what is wrong with it (too-long names, a file and a directory sharing a name).
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_tfhub.core.errors import ArchiveError, ConfigurationError
from airflow_provider_tfhub.core.extract import DEFAULT_MAX_EXTRACTED_FILES, max_extracted_files_from_env
from airflow_provider_tfhub.core.staging import stage
from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator
from airflow_provider_tfhub.testing.models import PLACEHOLDER_SAVED_MODEL


def make_archive(path: Path, members: list[tuple[str, bytes | None]]) -> str:
    """A .tar.gz of ``(name, data)`` members (``None`` data: a directory), after a saved_model.pb."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [("saved_model.pb", PLACEHOLDER_SAVED_MODEL), *members]:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def assert_nothing_left(cache_dir: str) -> None:
    assert not os.path.exists(cache_dir) or os.listdir(cache_dir) == []


def many_files(n: int) -> list[tuple[str, bytes | None]]:
    return [("assets/", None)] + [(f"assets/f{i:06d}", b"") for i in range(n)]


def test_file_limit_from_env_stops_while_streaming(
    tmp_path: Path, cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert max_extracted_files_from_env() == DEFAULT_MAX_EXTRACTED_FILES == 100_000
    archive = make_archive(tmp_path / "many.tar.gz", many_files(60))  # 62 files and directories in all
    monkeypatch.setenv("TFHUB_MAX_EXTRACTED_FILES", "50")

    with pytest.raises(ArchiveError, match=r"'assets/f000048' is file or directory number 51 .* limit of 50"):
        stage(archive, cache_dir)
    assert_nothing_left(cache_dir)

    monkeypatch.setenv("TFHUB_MAX_EXTRACTED_FILES", "62")
    assert stage(archive, cache_dir)["files"] == 61

    monkeypatch.setenv("TFHUB_MAX_EXTRACTED_FILES", "lots")
    with pytest.raises(ConfigurationError, match="TFHUB_MAX_EXTRACTED_FILES='lots'"):
        max_extracted_files_from_env()


def test_file_limit_as_operator_argument(tmp_path: Path, cache_dir: str) -> None:
    archive = make_archive(tmp_path / "many.tar.gz", many_files(60))
    op = TFHubStageModelOperator(task_id="s", handle=archive, cache_dir=cache_dir, max_extracted_files=10, retries=3)
    with pytest.raises(AirflowFailException, match="limit of 10"):
        op.execute({})
    assert_nothing_left(cache_dir)

    op = TFHubStageModelOperator(task_id="s", handle=archive, cache_dir=cache_dir, max_extracted_files=1000)
    assert op.execute({})["files"] == 61
    with pytest.raises(ConfigurationError, match="max_extracted_files=0"):
        TFHubStageModelOperator(task_id="bad", handle=archive, max_extracted_files=0)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (
            [("variables/" + "w" * 300, b"x")],
            r"Archive member 'variables/w{300}' .* path component of 300 bytes .* at most 255 bytes per name",
        ),
        (
            [("/".join(["d" * 250] * 20) + "/f", b"x")],
            r"Archive member 'd{250}/.*/f' makes a path too long for the cache filesystem",
        ),
        (
            [("assets", b"file"), ("assets/", None)],
            r"Archive member 'assets' of .* is a directory, but an earlier member is a file of the same name",
        ),
        (
            [("assets", b"file"), ("assets/vocab.txt", b"a")],
            r"Archive member 'assets/vocab.txt' of .* needs 'assets' to be a directory, but an earlier member made",
        ),
        (
            [("variables/", None), ("variables", b"file")],
            r"Archive member 'variables' of .* is a file, but an earlier member made it a directory",
        ),
    ],
    ids=["component-too-long", "path-too-long", "file-then-dir", "file-then-child", "dir-then-file"],
)
def test_member_naming_errors_name_the_member(
    tmp_path: Path, cache_dir: str, members: list[tuple[str, Any]], message: str
) -> None:
    archive = make_archive(tmp_path / "odd.tar.gz", members)
    with pytest.raises(ArchiveError, match=message) as info:
        stage(archive, cache_dir)
    assert "permissions" not in str(info.value)
    assert_nothing_left(cache_dir)
