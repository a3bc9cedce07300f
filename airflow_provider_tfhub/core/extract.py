"""Safe streaming extraction of a model archive into a :class:`TreeSink`.

The archive is never stored: compressed bytes go through the fastest gzip decoder installed
(ISA-L, then zlib-ng, both with inflate on their own thread; the stdlib as fallback) into
``tarfile``'s stream mode, and each member goes to the sink as it appears. Only regular files and
directories with relative, ``..``-free names are accepted, and the total of extracted bytes is
capped (decompression bombs), so a hostile archive is rejected naming the offending member before
anything of it is written outside the sink's temporary directory.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from airflow_provider_tfhub.core.errors import ArchiveError
from airflow_provider_tfhub.core.storage.base import MODEL_MARKERS, TreeSink
from airflow_provider_tfhub.core.transfer import CHUNK_SIZE

log = logging.getLogger(__name__)

DEFAULT_MAX_EXTRACTED_BYTES = 256 * 1024**3  # TFHUB_MAX_EXTRACTED_BYTES overrides
DEFAULT_MAX_MEMBERS = 1_000_000

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class ExtractStats:
    files: int
    bytes: int
    decoder: str


def max_extracted_bytes_from_env() -> int:
    text = os.environ.get("TFHUB_MAX_EXTRACTED_BYTES", "").strip()
    return int(text) if text.isdigit() else DEFAULT_MAX_EXTRACTED_BYTES


class _Peekable:
    """Lets us sniff the first bytes of a non-seekable stream without losing them."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.head = b""

    def peek(self, n: int) -> bytes:
        while len(self.head) < n:
            data = self.raw.read(n - len(self.head))
            if not data:
                break
            self.head += data
        return self.head[:n]

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n < 0:
                data, self.head = self.head + self.raw.read(), b""
                return bytes(data)
            data, self.head = self.head[:n], self.head[n:]
            return bytes(data)
        return bytes(self.raw.read(n))

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        pass


def open_decompressed(raw: Any, source: str) -> tuple[IO[bytes], str]:
    """Wrap ``raw`` in a decoder chosen by magic bytes; returns (stream, decoder name)."""
    peek = _Peekable(raw)
    head = peek.peek(512)
    if not head:
        raise ArchiveError(f"{source!r} is empty; expected a .tar.gz SavedModel archive.")
    if head.startswith(_GZIP_MAGIC):
        return _gzip_reader(peek)
    if head.startswith(b"BZh"):
        return bz2.BZ2File(peek, "rb"), "bz2"  # type: ignore[call-overload]
    if head.startswith(b"\xfd7zXZ"):
        return lzma.LZMAFile(peek, "rb"), "xz"  # type: ignore[arg-type]
    if len(head) >= 262 and head[257:262] == b"ustar":
        return peek, "none"  # type: ignore[return-value]
    lowered = head.lstrip()[:64].lower()
    if lowered.startswith((b"<!doctype", b"<html", b"<?xml", b"{")):
        raise ArchiveError(
            f"{source!r} returned a web page or JSON, not a model archive; use the model's handle or a direct "
            ".tar.gz URL (and a token if the hub needs one)."
        )
    raise ArchiveError(f"{source!r} is not a gzip/bz2/xz/tar archive (first bytes {head[:8]!r}).")


def _gzip_reader(raw: Any) -> tuple[IO[bytes], str]:
    try:
        from isal import igzip_threaded

        return igzip_threaded.open(raw, "rb", threads=1), "isal"
    except ImportError:
        pass
    try:
        from zlib_ng import gzip_ng_threaded

        return gzip_ng_threaded.open(raw, "rb", threads=1), "zlib-ng"
    except ImportError:
        pass
    return gzip.GzipFile(fileobj=raw, mode="rb"), "zlib"  # type: ignore[return-value]


def member_relpath(name: str) -> str | None:
    """The safe relative path of a member name; None for the archive root itself.

    Raises :class:`ArchiveError` for absolute names and any ``..`` component.
    """
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"Archive member {name!r} has an absolute path; refusing to extract it.")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ArchiveError(f"Archive member {name!r} escapes the model directory ('..'); refusing to extract it.")
    return "/".join(parts) or None


def extract_archive(
    raw: Any,
    sink: TreeSink,
    *,
    source: str,
    max_bytes: int | None = None,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> ExtractStats:
    """Stream-extract ``raw`` (compressed archive bytes) into ``sink``; validate it is a model."""
    limit = max_extracted_bytes_from_env() if max_bytes is None else max_bytes
    stream, decoder = open_decompressed(raw, source)
    files = total = members = 0
    names: set[str] = set()
    try:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK_SIZE)
        except tarfile.TarError as exc:
            raise ArchiveError(f"{source!r} does not appear to be a valid model archive: {exc}.") from exc
        try:
            for member in _members(tar, source):
                members += 1
                if members > max_members:
                    raise ArchiveError(f"{source!r} has more than {max_members} members; refusing to extract it.")
                rel = member_relpath(member.name)
                if member.isdir():
                    if rel:
                        sink.add_dir(rel)
                    continue
                if not member.isreg():
                    kind = _kind(member)
                    raise ArchiveError(
                        f"Archive member {member.name!r} is a {kind}; model archives may contain only regular "
                        f"files and directories. Refusing to extract {source!r}."
                    )
                if rel is None:
                    raise ArchiveError(f"Archive member {member.name!r} has no file name.")
                total += member.size
                if total > limit:
                    raise ArchiveError(
                        f"Archive member {member.name!r} takes {source!r} past the limit of {limit} extracted bytes "
                        "(decompression bomb?); raise TFHUB_MAX_EXTRACTED_BYTES if the model really is that big."
                    )
                fileobj = tar.extractfile(member)
                assert fileobj is not None
                sink.add_file(rel, member.size, _chunks(fileobj, member.size, member.name, source))
                files += 1
                names.add(rel)
        finally:
            tar.close()
        _drain(stream)
    except (EOFError, OSError, tarfile.TarError, zlib.error, lzma.LZMAError) as exc:
        # Sinks report their own failures as CacheError, so an OSError here is the decoder's.
        raise ArchiveError(
            f"{source!r} is truncated or corrupt ({type(exc).__name__}: {exc}); the download may have been "
            "cut off or the file is not a complete .tar.gz."
        ) from exc
    finally:
        stream.close()
    _check_model(names, source)
    return ExtractStats(files=files, bytes=total, decoder=decoder)


def _members(tar: tarfile.TarFile, source: str) -> Iterator[tarfile.TarInfo]:
    try:
        yield from tar
    except tarfile.TarError as exc:
        raise ArchiveError(f"{source!r} does not appear to be a valid model archive: {exc}.") from exc


def _chunks(fileobj: IO[bytes], size: int, name: str, source: str) -> Iterator[bytes]:
    remaining = size
    while remaining > 0:
        data = fileobj.read(min(CHUNK_SIZE, remaining))
        if not data:
            raise ArchiveError(f"{source!r} is truncated inside member {name!r}.")
        remaining -= len(data)
        yield data


def _drain(stream: IO[bytes]) -> None:
    while stream.read(CHUNK_SIZE):
        pass


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    return f"special member (type {member.type!r})"


def _check_model(names: set[str], source: str) -> None:
    if any(m in names for m in MODEL_MARKERS):
        return
    nested = sorted(n for n in names if n.rsplit("/", 1)[-1] in MODEL_MARKERS)
    if nested:
        raise ArchiveError(
            f"{source!r} has {nested[0]!r} but not at the archive root; tensorflow_hub expects saved_model.pb at the "
            "root: repack the archive from inside the SavedModel directory (tar -czf m.tar.gz -C dir .)."
        )
    raise ArchiveError(
        f"{source!r} contains no saved_model.pb (nor TF1 tfhub_module.pb); it is not a SavedModel archive."
    )
