"""Builders for tiny and huge SavedModels, tfhub.dev-style archives, and deliberately broken archives.

Why: tests, the demo and the benchmarks need models that load with real TensorFlow and produce
known outputs, archives laid out exactly like tfhub.dev's (members at the archive root: ``./saved_model.pb``,
``./variables/...``), and hostile archives (path traversal, links, devices, a gzip bomb) to prove the
extractor rejects them. Building a SavedModel costs seconds, so :func:`cached_model_archive` builds each
named variant once per cache directory.

TensorFlow is imported inside the functions that need it, never at module level, so the archive helpers
(and everything importing this module for them) stay fast and work without TensorFlow.

The demo model computes ``y = x * scale + offset`` on float32 inputs of shape ``[None, 3]``:

* ``model(x)`` (plain ``__call__``) returns that tensor;
* ``model.signatures["serving_default"](x=x)`` returns ``{"y": <that tensor>}``.

With the defaults (``scale=2.0``, ``offset=1.0``): zeros give ``1.0`` everywhere, ones give ``3.0``,
``[[1, 2, 3]]`` gives ``[[3, 5, 7]]``. :func:`expected_output` computes the same thing without TensorFlow.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import struct
import tarfile
import uuid
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal

__all__ = [
    "MALICIOUS_KINDS",
    "build_big_saved_model",
    "build_saved_model",
    "cached_model_archive",
    "expected_output",
    "make_archive",
    "make_html_page",
    "make_malicious_archive",
]

GZIP_LEVEL = 6
"""What ``tar czf`` (and hence tfhub.dev's archives) use by default."""

BOMB_SIZE = 2 << 30
"""Default declared size of the gzip bomb's member: 2 GiB of zeros, about 2 MB compressed."""

PLACEHOLDER_SAVED_MODEL = b"\x08\x01"
"""A valid, harmless ``SavedModel`` protobuf (``saved_model_schema_version: 1``, no graphs).

Malicious archives carry it so that "has a saved_model.pb" checks pass and only the malicious member is
wrong; TensorFlow would still refuse to load it (no MetaGraph), which is fine for extraction tests.
"""

MALICIOUS_KINDS = (
    "traversal",
    "traversal_nested",
    "absolute",
    "symlink",
    "hardlink",
    "device",
    "bomb",
    "no_model",
)

_ZERO_BLOCK = bytes(1 << 20)


def expected_output(x: Sequence[Sequence[float]], *, scale: float = 2.0, offset: float = 1.0) -> list[list[float]]:
    """What the demo model returns for ``x`` (pure Python, for assertions without TensorFlow)."""
    return [[v * scale + offset for v in row] for row in x]


# -- SavedModels ------------------------------------------------------------------------------------------


def build_saved_model(
    dest_dir: str | os.PathLike[str],
    *,
    scale: float = 2.0,
    offset: float = 1.0,
    num_params: int = 0,
    seed: int = 0,
) -> Path:
    """Save a ``tf.Module`` computing ``x * scale + offset`` (see the module docstring) into ``dest_dir``.

    ``num_params`` adds an unused float32 variable ``extra`` of that many standard-normal values (seeded by
    ``seed``): random floats compress about as badly as real weights, so archive sizes and download times
    are realistic. Returns ``dest_dir`` as a Path. ``dest_dir`` must not exist or be empty.
    """
    import numpy as np
    import tensorflow as tf

    dest = Path(dest_dir)

    class DemoModel(tf.Module):
        """y = x * scale + offset; ``extra`` only adds bytes."""

        def __init__(self) -> None:
            super().__init__(name="demo_model")
            self.scale = tf.Variable(scale, dtype=tf.float32, name="scale")
            self.offset = tf.Variable(offset, dtype=tf.float32, name="offset")
            if num_params > 0:
                values = np.random.default_rng(seed).standard_normal(num_params, dtype=np.float32)
                self.extra = tf.Variable(values, dtype=tf.float32, name="extra", trainable=False)
                del values  # the variable holds its own copy; halve peak memory for huge models

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def __call__(self, x: Any) -> Any:
            return x * self.scale + self.offset

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"y": x * self.scale + self.offset}

    model = DemoModel()
    tf.saved_model.save(model, str(dest), signatures={"serving_default": model.serve})
    return dest


def build_big_saved_model(dest_dir: str | os.PathLike[str], size_bytes: int, seed: int = 0) -> Path:
    """Like :func:`build_saved_model`, with the ``extra`` variable sized so the model is ~``size_bytes``.

    Peak memory is about 3x the size (numpy array, variable, checkpoint writer): fine for 512 MB, which is
    what the benchmarks use; it is meant to run once to generate benchmark data.
    """
    overhead = 64 * 1024  # saved_model.pb + index + fingerprint, roughly
    return build_saved_model(dest_dir, num_params=max(0, (size_bytes - overhead) // 4), seed=seed)


# -- archives ---------------------------------------------------------------------------------------------


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Keep only regular files and dirs; drop ownership so archives do not leak the builder's identity."""
    if not (info.isreg() or info.isdir()):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def make_archive(
    src_dir: str | os.PathLike[str],
    archive_path: str | os.PathLike[str],
    *,
    compression: Literal["gz", "none"] = "gz",
) -> Path:
    """Tar ``src_dir`` the way tfhub.dev archives are made (``tar czf x.tar.gz -C src_dir .``).

    Members are ``.``, ``./saved_model.pb``, ``./variables``, ``./variables/variables.index``... in sorted
    order, regular files and directories only, gzip level 6 with a zero gzip timestamp (so rebuilding the
    same files gives the same bytes). ``compression="none"`` writes a plain ``.tar``.
    """
    src = Path(src_dir)
    dest = Path(archive_path)
    if not src.is_dir():
        raise NotADirectoryError(f"{src} is not a directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as raw:
            if compression == "gz":
                with (
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) as gz,
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
                ):
                    tar.add(src, arcname=".", recursive=True, filter=_normalise)
            elif compression == "none":
                with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
                    tar.add(src, arcname=".", recursive=True, filter=_normalise)
            else:
                raise ValueError(f"compression must be 'gz' or 'none', not {compression!r}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


class _GzipWriter(io.RawIOBase):
    """A write-only gzip stream (raw deflate + our own header/trailer) that appends zero runs cheaply.

    Why not :class:`gzip.GzipFile`: the bomb holds 2 GiB of zeros and compressing them takes ~5 s. After a
    ``Z_FULL_FLUSH`` the deflate stream is byte-aligned and references nothing before it, so the compressed
    form of a 1 MiB zero block can be computed once and repeated; the result is an ordinary, valid single-
    member gzip file (CRC and size are still computed over every byte).
    """

    def __init__(self, raw: IO[bytes], level: int = GZIP_LEVEL) -> None:
        super().__init__()
        self._raw = raw
        self._level = level
        self._comp = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._crc = 0
        self._size = 0
        self._zero_block_deflated: bytes | None = None
        # ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=unknown
        raw.write(b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x00\xff")

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._size

    def write(self, data: Any) -> int:
        if data is _ZERO_BLOCK:
            if self._zero_block_deflated is None:
                comp = zlib.compressobj(self._level, zlib.DEFLATED, -zlib.MAX_WBITS)
                self._zero_block_deflated = comp.compress(_ZERO_BLOCK) + comp.flush(zlib.Z_FULL_FLUSH)
            self._raw.write(self._comp.flush(zlib.Z_FULL_FLUSH))
            self._raw.write(self._zero_block_deflated)
        else:
            self._raw.write(self._comp.compress(data))
        view = memoryview(data)
        self._crc = zlib.crc32(view, self._crc)
        self._size += view.nbytes
        return view.nbytes

    def close(self) -> None:
        if not self.closed:
            self._raw.write(self._comp.flush(zlib.Z_FINISH))
            self._raw.write(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))
        super().close()


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, handed out as the shared 1 MiB block whenever possible (see :class:`_GzipWriter`)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        self._left -= n
        return _ZERO_BLOCK if n == len(_ZERO_BLOCK) else bytes(n)


@contextlib.contextmanager
def _gz_tar(path: Path) -> Iterator[tarfile.TarFile]:
    """Open a gzip'd tar for writing through :class:`_GzipWriter`, atomically replacing ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as raw:
            gz = _GzipWriter(raw)
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                tar.copybufsize = len(_ZERO_BLOCK)  # type: ignore[attr-defined]  # undocumented, stable since 3.8
                yield tar
            gz.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_special(tar: tarfile.TarFile, name: str, type_: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    info.mode = 0o644
    if type_ == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3  # what /dev/null is; never created, only declared
    tar.addfile(info)


def make_malicious_archive(
    archive_path: str | os.PathLike[str],
    kind: str,
    *,
    bomb_size: int = BOMB_SIZE,
) -> Path:
    """Write a ``.tar.gz`` that a safe extractor must reject, and return its path.

    Every kind except ``no_model`` also contains ``./saved_model.pb`` (:data:`PLACEHOLDER_SAVED_MODEL`)
    and ``./variables/`` so that only the malicious part is wrong:

    * ``traversal``: ``../evil.txt``; ``traversal_nested``: ``./variables/../../evil.txt``;
    * ``absolute``: ``/tmp/evil-<random hex>.txt`` (random, so a buggy extractor cannot clobber a
      neighbour's test; read the name back with ``tarfile``);
    * ``symlink``: ``./evil_link`` -> ``/etc/passwd``; ``hardlink``: ``./evil_hardlink`` -> ``/etc/passwd``;
    * ``device``: ``./evil_device``, a character device (1, 3), declared only, no mknod;
    * ``bomb``: ``./variables/variables.data-00000-of-00001`` declaring ``bomb_size`` bytes (default 2 GiB)
      of zeros, ~1/1000 of that compressed; built streaming, nothing large in memory or on disk;
    * ``no_model``: a valid archive holding only ``./README.txt``.
    """
    if kind not in MALICIOUS_KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {MALICIOUS_KINDS}")
    dest = Path(archive_path)
    with _gz_tar(dest) as tar:
        if kind == "no_model":
            _add_bytes(tar, "./README.txt", b"This archive intentionally contains no SavedModel.\n")
            return dest
        root = tarfile.TarInfo(".")
        root.type, root.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(root)
        _add_bytes(tar, "./saved_model.pb", PLACEHOLDER_SAVED_MODEL)
        variables = tarfile.TarInfo("./variables")
        variables.type, variables.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(variables)
        evil = b"written by a malicious archive\n"
        if kind == "traversal":
            _add_bytes(tar, "../evil.txt", evil)
        elif kind == "traversal_nested":
            _add_bytes(tar, "./variables/../../evil.txt", evil)
        elif kind == "absolute":
            _add_bytes(tar, f"/tmp/evil-{uuid.uuid4().hex}.txt", evil)
        elif kind == "symlink":
            _add_special(tar, "./evil_link", tarfile.SYMTYPE, "/etc/passwd")
        elif kind == "hardlink":
            _add_special(tar, "./evil_hardlink", tarfile.LNKTYPE, "/etc/passwd")
        elif kind == "device":
            _add_special(tar, "./evil_device", tarfile.CHRTYPE)
        elif kind == "bomb":
            info = tarfile.TarInfo("./variables/variables.data-00000-of-00001")
            info.size, info.mode = bomb_size, 0o644
            tar.addfile(info, _Zeros(bomb_size))
    return dest


def make_html_page(path: str | os.PathLike[str]) -> Path:
    """Write a small HTML "model page", what a download gets from a login wall or a page URL."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(
        "<!DOCTYPE html>\n<html><head><title>demo model | TensorFlow Hub</title></head>\n"
        "<body><h1>demo</h1><p>A model page, not a model archive.</p></body></html>\n",
        encoding="utf-8",
    )
    return dest


# -- cache ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise builders of one cache entry across processes (pytest-xdist workers, parallel CI jobs)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: rely on the atomic rename alone
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_model_archive(cache_root: str | os.PathLike[str], name: str, **kwargs: Any) -> Path:
    """Build model ``name`` and its archive once into ``cache_root``; return the archive path.

    Layout: ``<cache_root>/<name>/saved_model/`` (the SavedModel dir) and ``<cache_root>/<name>/model.tar.gz``
    (``model.tar`` with ``compression="none"``). ``kwargs`` go to :func:`build_saved_model`, except
    ``size_bytes`` (use :func:`build_big_saved_model`) and ``compression`` (for :func:`make_archive`). An
    entry built with different kwargs is rebuilt. Safe to call concurrently from several processes.
    """
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    compression = kwargs.pop("compression", "gz")
    size_bytes = kwargs.pop("size_bytes", None)
    params = {"compression": compression, "size_bytes": size_bytes, **kwargs}
    entry = root / name
    archive = entry / ("model.tar.gz" if compression == "gz" else "model.tar")
    marker = entry / "params.json"

    def _fresh() -> bool:
        try:
            return bool(json.loads(marker.read_text()) == params and archive.is_file())
        except (OSError, ValueError):
            return False

    if _fresh():
        return archive
    with _file_lock(root / f".{name}.lock"):
        if _fresh():
            return archive
        tmp = root / f".{name}.{uuid.uuid4().hex}.tmp"
        try:
            if size_bytes is not None:
                build_big_saved_model(tmp / "saved_model", int(size_bytes), seed=int(kwargs.get("seed", 0)))
            else:
                build_saved_model(tmp / "saved_model", **kwargs)
            make_archive(tmp / "saved_model", tmp / archive.name, compression=compression)
            (tmp / "params.json").write_text(json.dumps(params))
            if entry.exists():
                shutil.rmtree(entry)
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return archive


def build_archives_in_subprocess(
    cache_root: str | os.PathLike[str], specs: dict[str, dict[str, Any]], *, timeout: float = 600
) -> dict[str, Path]:
    """:func:`cached_model_archive` for each ``name: kwargs`` of ``specs``, run in a child Python process.

    Building imports TensorFlow; doing it in a child keeps TensorFlow (its memory, threads and start-up)
    out of the calling process: a test session, the demo, a cluster harness. The child runs quiet and on
    the CPU unless the environment says otherwise. Raises RuntimeError with the child's stderr when a
    build fails.
    """
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from tfhub_cache.testing.models import cached_model_archive\n"
        "specs = json.loads(sys.argv[2])\n"
        "print(json.dumps({n: str(cached_model_archive(sys.argv[1], n, **kw)) for n, kw in specs.items()}))\n"
    )
    # quiet, and on the CPU: test models are tiny, and a GPU would only add start-up time and nondeterminism
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", **os.environ}
    done = subprocess.run(
        [sys.executable, "-c", code, os.fspath(cache_root), json.dumps(specs)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"building the model archives {sorted(specs)} failed:\n{done.stderr[-4000:]}")
    return {name: Path(path) for name, path in json.loads(done.stdout.strip().splitlines()[-1]).items()}
