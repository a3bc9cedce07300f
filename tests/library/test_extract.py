"""``core/extract.py``: the streaming extractor and what it refuses, with nothing left behind.

Archive limits and naming errors: a cap on files created (``TFHUB_MAX_EXTRACTED_FILES`` /
``max_extracted_files``), checked while streaming with nothing left behind, and errors that name
the member and what is wrong with it (too-long names, a file and a directory sharing a name).
A full disk (a 2 MB tmpfs, or RLIMIT_FSIZE) is a clear error; hostile archives, built byte by
byte (``..``, absolute paths, links, devices, bombs), are rejected naming the member.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException
from stage_helpers import FAST, MEDIUM

from airflow_provider_tfhub.operators.stage import TFHubStageModelOperator
from tfhub_cache.archive.extract import max_extracted_files_from_env
from tfhub_cache.cache.staging import stage
from tfhub_cache.errors import ArchiveError, ConfigurationError, DiskFullError
from tfhub_cache.settings import DEFAULT_MAX_EXTRACTED_FILES
from tfhub_cache.testing.models import PLACEHOLDER_SAVED_MODEL, make_malicious_archive

PY = sys.executable


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


def assert_nothing_left(cache_dir: str | Path) -> None:
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
    with pytest.raises(ConfigurationError, match="Environment variable `TFHUB_MAX_EXTRACTED_FILES` is 'lots'"):
        max_extracted_files_from_env()


def test_file_limit_as_operator_argument(tmp_path: Path, cache_dir: str) -> None:
    archive = make_archive(tmp_path / "many.tar.gz", many_files(60))
    op = TFHubStageModelOperator(task_id="s", handle=archive, cache_dir=cache_dir, max_extracted_files=10, retries=3)
    with pytest.raises(AirflowFailException, match="limit of 10"):
        op.execute({})
    assert_nothing_left(cache_dir)

    op = TFHubStageModelOperator(task_id="s", handle=archive, cache_dir=cache_dir, max_extracted_files=1000)
    assert op.execute({})["files"] == 61
    with pytest.raises(ConfigurationError, match="files 0 \\(from argument `max_extracted_files`\\)"):
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


# -- disk full -------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs here ({done.stderr.decode().strip()}); the RLIMIT_FSIZE test covers it")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_during_extraction_is_a_clear_error_and_leaves_no_temp(
    hub: Any, handle_of: Any, tiny_tmpfs: Path
) -> None:
    cache = tiny_tmpfs / "cache"
    with pytest.raises(DiskFullError, match="No space left while writing") as info:
        stage(handle_of("medium"), str(cache), retry=FAST)
    assert str(cache) in str(info.value)
    assert_nothing_left(cache)
    assert hub.stats()["models"][MEDIUM]["archive_full"] == 1  # a full disk is not retried


_FSIZE_STAGER = textwrap.dedent(
    """
    import json, resource, signal, sys
    from tfhub_cache.errors import DiskFullError
    from tfhub_cache.cache.staging import stage
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))
    try:
        stage(sys.argv[1], sys.argv[2])
    except DiskFullError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc), "permanent": exc.permanent}))
    """
)


def test_file_size_limit_during_extraction_is_a_clear_error_and_leaves_no_temp(
    hub: Any, handle_of: Any, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    out = subprocess.run(
        [PY, "-c", _FSIZE_STAGER, handle_of("medium"), str(cache)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["error"] == "DiskFullError" and str(cache) in report["message"]
    assert_nothing_left(cache)


# -- hostile archives -------------------------------------------------------------------------------------------


_MEMBER_NAMED = {
    "traversal": "../evil.txt",
    "traversal_nested": "./variables/../../evil.txt",
    "absolute": "/tmp/evil-",
    "symlink": "./evil_link",
    "hardlink": "./evil_hardlink",
    "device": "./evil_device",
    "bomb": "./variables/variables.data-00000-of-00001",
    "no_model": "no saved_model.pb",
}


@pytest.mark.parametrize("kind", list(_MEMBER_NAMED))
def test_hostile_archives_are_rejected_naming_the_member_and_write_nothing_outside(
    hub: Any, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_malicious_archive(tmp_path / "archives" / f"{kind}.tar.gz", kind)
    monkeypatch.setenv("TFHUB_MAX_EXTRACTED_BYTES", str(1 << 20))  # the bomb declares 2 GiB
    handle = hub.add_archive(f"{kind}.tar.gz", archive)
    workdir = tmp_path / "work"
    cache = workdir / "cache"
    before = set(os.listdir("/tmp"))
    with pytest.raises(ArchiveError) as info:
        stage(handle, str(cache), retry=FAST)
    assert _MEMBER_NAMED[kind] in str(info.value)
    assert_nothing_left(cache)
    assert sorted(p.name for p in workdir.iterdir()) == ["cache"]  # nothing next to the cache either
    assert not [n for n in set(os.listdir("/tmp")) - before if n.startswith("evil")]
    if kind == "absolute":
        with tarfile.open(archive) as tar:
            absolute = next(m.name for m in tar.getmembers() if m.name.startswith("/"))
        assert absolute in str(info.value) and not Path(absolute).exists()
    assert len([r for r in hub.stats()["recent"] if r["path"].startswith("/archives/")]) == 1  # not retried


def test_bomb_limit_as_an_argument(hub: Any, tmp_path: Path) -> None:
    archive = make_malicious_archive(tmp_path / "bomb.tar.gz", "bomb", bomb_size=64 << 20)
    handle = hub.add_archive("bomb-arg.tar.gz", archive)
    with pytest.raises(ArchiveError, match="past the limit of 1000000 extracted bytes"):
        stage(handle, str(tmp_path / "cache"), max_extracted_bytes=1_000_000)
    assert_nothing_left(tmp_path / "cache")
    # the same archive within a generous limit is merely "not a loadable model", but it extracts
    result = stage(handle, str(tmp_path / "cache2"), max_extracted_bytes=128 << 20)
    assert result["bytes"] == (64 << 20) + 2
