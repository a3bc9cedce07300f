"""Safe streaming extraction of a model archive into a :class:`TreeSink`.

The archive is never stored. Compressed chunks go straight from the source (for HTTP, a network
thread's queue) into a streaming decompressor: ISA-L, else zlib-ng, else the stdlib's zlib, all of
which release the GIL while they inflate. A small tar reader cuts the decompressed blocks into
members and hands each member's bytes to the sink as slices of those blocks, so a full block is
never copied (the sink's writer thread writes and checksums it while we inflate the next one).
Why not ``tarfile``'s stream mode on a ``GzipFile``: it copies every byte three or four times
through its buffers, with the GIL held, which cost a third of the stage time of a 512 MB model.
Header parsing is still ``tarfile``'s own (ustar, GNU long names, pax), only the data path is ours.

Only regular files and directories with relative, ``..``-free names are accepted, and the total
of extracted bytes is capped (decompression bombs), so a hostile archive is rejected naming the
offending member before anything of it is written outside the sink's temporary directory.
"""

from __future__ import annotations

import bz2
import logging
import lzma
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from tfhub_cache import settings
from tfhub_cache.errors import ArchiveError
from tfhub_cache.responses import ARCHIVE_ADVICE
from tfhub_cache.storage.base import CHUNK_SIZE, MODEL_MARKERS, TreeSink

log = logging.getLogger(__name__)

DEFAULT_MAX_MEMBERS = 1_000_000
#: Longest name of one path component on Linux filesystems (ext4, xfs, ...), in bytes.
NAME_MAX = 255

#: Largest decompressed block handed on at once: bounds memory whatever the compression ratio.
BLOCK_SIZE = 1 << 20
#: Largest tar metadata record (pax header, GNU long name) we accept; real ones are < 1 KiB.
_MAX_HEADER_DATA = 1 << 20
#: Bytes tolerated after the tar end-of-archive marker (tar pads to 10 KiB records; more is junk).
_MAX_TRAILING = 16 << 20

_GZIP_MAGIC = b"\x1f\x8b"
_BLOCK = tarfile.BLOCKSIZE


@dataclass(frozen=True)
class ExtractStats:
    files: int
    bytes: int
    decoder: str


def max_extracted_bytes_from_env() -> int:
    """``TFHUB_MAX_EXTRACTED_BYTES`` (a positive integer), else :data:`DEFAULT_MAX_EXTRACTED_BYTES`."""
    return settings.max_extracted_bytes()


def max_extracted_files_from_env() -> int:
    """``TFHUB_MAX_EXTRACTED_FILES`` (a positive integer), else :data:`DEFAULT_MAX_EXTRACTED_FILES`."""
    return settings.max_extracted_files()


def check_max_files(value: object) -> int:
    """``value`` as a positive number of files, or a ``ConfigurationError`` naming the argument."""
    return settings.max_extracted_files(value)


def gzip_decoder() -> tuple[Callable[[], Any], str]:
    """The fastest installed zlib-compatible decompressor factory (gzip framing) and its name.

    Measured on a 497 MB archive of random float32 weights (benchmarks/README.md): ISA-L inflates
    at ~400 MB/s, zlib-ng at ~270 MB/s, the stdlib at ~190 MB/s on this class of machine.
    """
    try:
        from isal import isal_zlib

        return (lambda: isal_zlib.decompressobj(31)), "isal"
    except ImportError:
        pass
    try:
        from zlib_ng import zlib_ng

        return (lambda: zlib_ng.decompressobj(31)), "zlib-ng"
    except ImportError:
        pass
    return (lambda: zlib.decompressobj(31)), "zlib"


def source_chunks(raw: Any) -> Iterator[bytes]:
    """The compressed bytes of ``raw`` as an iterator of chunks.

    Sources that queue whole chunks (:class:`~tfhub_cache.fetch.streams.ArchiveStream`)
    hand them over as they are; any other readable file object is read in :data:`CHUNK_SIZE` steps.
    """
    chunks = getattr(raw, "chunks", None)
    if callable(chunks):
        yield from chunks()
        return
    while True:
        data = raw.read(CHUNK_SIZE)
        if not data:
            return
        yield bytes(data)


def _sniff(chunks: Iterator[bytes]) -> tuple[bytes, Iterator[bytes]]:
    """Collect the first 512 bytes (or everything, if less) without losing them."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= _BLOCK:
            break
    return head, chunks


def _format_of(head: bytes, source: str) -> str:
    if not head:
        raise ArchiveError(f"{source!r} is empty; expected a .tar.gz SavedModel archive.")
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bz2"
    if head.startswith(b"\xfd7zXZ"):
        return "xz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "none"
    lowered = head.lstrip()[:64].lower()
    if lowered.startswith((b"<!doctype", b"<html", b"<?xml", b"{")):
        raise ArchiveError(f"{source!r} returned a web page or JSON, not a model archive; {ARCHIVE_ADVICE}.")
    raise ArchiveError(f"{source!r} is not a gzip/bz2/xz/tar archive (first bytes {head[:8]!r}).")


def inflate_zlib(chunks: Iterable[bytes], factory: Callable[[], Any], source: str) -> Iterator[bytes]:
    """Decompress (possibly multi-member) gzip into blocks of at most :data:`BLOCK_SIZE` bytes.

    The gzip trailer's CRC-32 and length are checked by the decompressor; junk after the last
    member (zero padding) is ignored like gzip(1) and tensorflow_hub do; a stream that stops
    early is an error. ``max_length`` keeps every output block bounded, whatever the ratio.
    """
    d = factory()
    carry = b""
    junk = False
    for chunk in chunks:
        if junk:
            continue  # still read the input to its end, so its hash covers the whole archive
        data = carry + chunk if carry else chunk
        carry = b""
        while data:
            if d.eof:
                if len(data) < len(_GZIP_MAGIC):
                    carry = data  # a next member's magic may straddle two chunks
                    break
                if not data.startswith(_GZIP_MAGIC):
                    log.debug("Ignoring the bytes after the gzip stream of %s.", source)
                    junk = True
                    break
                d = factory()
            out = _decompress(d, data, source)
            data = d.unused_data if d.eof else d.unconsumed_tail
            if out:
                yield out
    while not d.eof:  # the input has ended: flush what the decompressor still holds, in bounded pieces
        out = _decompress(d, b"", source)
        if not out:
            raise ArchiveError(
                f"{source!r} is truncated or corrupt (its gzip stream ends early); the download may have been cut "
                "off or the file is not a complete .tar.gz."
            )
        yield out


def _decompress(d: Any, data: bytes, source: str) -> bytes:
    """One bounded decompress call; every decoder's own error type becomes a clear ArchiveError."""
    try:
        return bytes(d.decompress(data, BLOCK_SIZE))
    except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as exc:
        raise _corrupt(source, exc) from exc
    except Exception as exc:  # isal's IsalError and zlib-ng's error derive from Exception only
        if type(exc).__name__ in ("IsalError", "error"):
            raise _corrupt(source, exc) from exc
        raise


def _inflate_other(chunks: Iterable[bytes], d: Any, source: str) -> Iterator[bytes]:
    """bz2 / xz: same bounded blocks through the ``needs_input`` protocol of those decompressors."""
    for chunk in chunks:
        data = chunk
        while True:
            if d.eof:
                return
            out = _decompress(d, data, source)
            data = b""
            if out:
                yield out
            if d.needs_input:
                break
    while not d.eof:
        out = _decompress(d, b"", source)
        if not out:
            break
        yield out
    if not d.eof:
        raise ArchiveError(f"{source!r} is truncated or corrupt (its compressed stream ends early).")


def decompressed_blocks(raw: Any, source: str) -> tuple[Iterator[bytes], str]:
    """Sniff ``raw``'s format by magic bytes; return (iterator of decompressed blocks, decoder name)."""
    head, rest = _sniff(source_chunks(raw))
    kind = _format_of(head, source)

    def chunks() -> Iterator[bytes]:
        yield head
        yield from rest

    if kind == "gzip":
        factory, name = gzip_decoder()
        return inflate_zlib(chunks(), factory, source), name
    if kind == "bz2":
        return _inflate_other(chunks(), bz2.BZ2Decompressor(), source), "bz2"
    if kind == "xz":
        return _inflate_other(chunks(), lzma.LZMADecompressor(), source), "xz"
    return chunks(), "none"


class _TarReader:
    """Serves ``tarfile`` header parsing (``read``/``tell``) and member data (``slices``) from blocks.

    It also stands in for the ``TarFile`` that :meth:`tarfile.TarInfo.fromtarfile` expects, which
    only uses ``fileobj``, ``encoding``, ``errors``, ``pax_headers`` and ``offset``.
    """

    encoding = "utf-8"
    errors = "surrogateescape"

    def __init__(self, blocks: Iterator[bytes], source: str) -> None:
        self._blocks = blocks
        self._buf = b""
        self._pos = 0
        self._offset = 0  # absolute position of _buf[0]
        self.source = source
        self.fileobj = self
        self.pax_headers: dict[str, str] = {}
        self.offset = 0

    def _next_block(self) -> bool:
        for block in self._blocks:
            if block:
                self._offset += len(self._buf)
                self._buf, self._pos = block, 0
                return True
        return False

    def tell(self) -> int:
        return self._offset + self._pos

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end); only for headers and metadata records."""
        if n > _MAX_HEADER_DATA:
            raise ArchiveError(
                f"{self.source!r} has a tar metadata record of {n} bytes (pax header or long name); refusing it."
            )
        parts = []
        want = n
        while want > 0:
            if self._pos >= len(self._buf) and not self._next_block():
                break
            piece = self._buf[self._pos : self._pos + want]
            self._pos += len(piece)
            want -= len(piece)
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def slices(self, size: int, name: str) -> Iterator[bytes]:
        """Exactly ``size`` bytes of member data, as slices of the decompressed blocks (full blocks uncopied)."""
        remaining = size
        while remaining > 0:
            if self._pos >= len(self._buf) and not self._next_block():
                raise ArchiveError(f"{self.source!r} is truncated or corrupt (it ends inside member {name!r}).")
            end = min(len(self._buf), self._pos + remaining)
            piece = self._buf[self._pos : end] if (self._pos or end != len(self._buf)) else self._buf
            self._pos = end
            remaining -= len(piece)
            yield piece

    def skip(self, size: int, name: str) -> None:
        for _ in self.slices(size, name):
            pass

    def drain(self, limit: int) -> None:
        """Read to the end of the decompressed stream (verifies the gzip trailer), at most ``limit`` bytes."""
        seen = len(self._buf) - self._pos
        while self._next_block():
            seen += len(self._buf)
            if seen > limit:
                raise ArchiveError(
                    f"{self.source!r} carries more than {limit} bytes after the end of its tar archive; refusing it."
                )
        self._pos = len(self._buf)

    def next_member(self) -> tarfile.TarInfo | None:
        """The next member's header (pax and GNU long-name records applied), or None at the end."""
        aligned = -self.tell() % _BLOCK
        if aligned:
            self.skip(aligned, "(padding)")
        start = self.tell()
        try:
            return tarfile.TarInfo.fromtarfile(self)  # type: ignore[arg-type]
        except tarfile.HeaderError as exc:
            kind, detail = type(exc).__name__, str(exc)  # the subclasses are not in typeshed
        if kind == "EOFHeaderError":  # a zero block: the end-of-archive marker
            return None
        if kind == "EmptyHeaderError":  # no more data: archives without an end marker are accepted
            if start == 0:
                raise ArchiveError(f"{self.source!r} is an empty tar archive; expected a SavedModel.")
            return None
        if kind == "TruncatedHeaderError":
            raise ArchiveError(f"{self.source!r} is truncated or corrupt (it ends inside a tar header).")
        raise ArchiveError(f"{self.source!r} does not appear to be a valid model archive ({detail}).")


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
    max_files: int | None = None,
) -> ExtractStats:
    """Stream-extract ``raw`` (compressed archive bytes) into ``sink``; validate it is a model.

    ``raw`` is an :class:`~tfhub_cache.fetch.streams.ArchiveStream` or any readable
    binary file object; it is read to its end, so its hash covers the whole archive.
    ``max_files`` caps the files and directories created (default ``TFHUB_MAX_EXTRACTED_FILES``).
    """
    limit = max_extracted_bytes_from_env() if max_bytes is None else max_bytes
    file_limit = max_extracted_files_from_env() if max_files is None else check_max_files(max_files)
    try:
        blocks, decoder = decompressed_blocks(raw, source)
        reader = _TarReader(blocks, source)
        files, total, names = _extract_members(reader, sink, source, limit, max_members, file_limit)
    except (EOFError, zlib.error, lzma.LZMAError) as exc:  # decoders' errors are translated in _decompress
        raise _corrupt(source, exc) from exc
    _check_model(names, source)
    return ExtractStats(files=files, bytes=total, decoder=decoder)


def _extract_members(
    reader: _TarReader, sink: TreeSink, source: str, limit: int, max_members: int, max_files: int
) -> tuple[int, int, set[str]]:
    files = total = members = 0
    names: set[str] = set()
    tree = _TreeShape(source)
    while (member := reader.next_member()) is not None:
        members += 1
        if members > max_members:
            raise ArchiveError(f"{source!r} has more than {max_members} members; refusing to extract it.")
        rel = member_relpath(member.name)
        if rel is not None:
            _check_name_lengths(member.name, rel, source)
            if member.isdir() or member.isreg():
                tree.add(member.name, rel, is_dir=member.isdir())
                if tree.created > max_files:
                    raise ArchiveError(
                        f"Archive member {member.name!r} is file or directory number {tree.created} of {source!r}, "
                        f"past the limit of {max_files} (TFHUB_MAX_EXTRACTED_FILES / max_extracted_files); real "
                        "models have far fewer. Raise the limit only if this model really has that many files."
                    )
        if member.isdir():
            if rel:
                sink.add_dir(rel)
            continue
        if not member.isreg() or member.issparse():
            raise ArchiveError(
                f"Archive member {member.name!r} is a {_kind(member)}; model archives may contain only regular "
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
        sink.add_file(rel, member.size, reader.slices(member.size, member.name))
        files += 1
        names.add(rel)
    reader.drain(_MAX_TRAILING)
    return files, total, names


class _TreeShape:
    """The files and directories an archive creates so far, to refuse file/directory conflicts early.

    A file member whose name is (or is inside) an earlier file, or a directory member named like an
    earlier file, cannot be extracted; saying which member and why beats a filesystem error.
    ``created`` counts every file and directory that extraction creates (implied parents too).
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.files: set[str] = set()
        self.dirs: set[str] = set()

    @property
    def created(self) -> int:
        return len(self.files) + len(self.dirs)

    def add(self, name: str, rel: str, *, is_dir: bool) -> None:
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in self.files:
                raise ArchiveError(
                    f"Archive member {name!r} of {self.source!r} needs {parent!r} to be a directory, but an earlier "
                    f"member made {parent!r} a file; the archive is malformed (a file and a directory share a "
                    "name): repack it."
                )
            self.dirs.add(parent)
        if is_dir:
            if rel in self.files:
                raise ArchiveError(
                    f"Archive member {name!r} of {self.source!r} is a directory, but an earlier member is a file of "
                    "the same name; the archive is malformed (a file and a directory share a name): repack it."
                )
            self.dirs.add(rel)
        else:
            if rel in self.dirs:
                raise ArchiveError(
                    f"Archive member {name!r} of {self.source!r} is a file, but an earlier member made it a "
                    "directory; the archive is malformed (a file and a directory share a name): repack it."
                )
            self.files.add(rel)


def _check_name_lengths(name: str, rel: str, source: str) -> None:
    """Refuse names no filesystem can hold, naming the member (not "check permissions and space")."""
    for part in rel.split("/"):
        size = len(part.encode("utf8", "surrogateescape"))
        if size > NAME_MAX:
            raise ArchiveError(
                f"Archive member {name!r} of {source!r} has a path component of {size} bytes "
                f"({part[:40]!r}...); filesystems allow at most {NAME_MAX} bytes per name, so it cannot be "
                "extracted: repack the archive with shorter names."
            )


def _corrupt(source: str, exc: BaseException) -> ArchiveError:
    return ArchiveError(
        f"{source!r} is truncated or corrupt ({type(exc).__name__}: {exc}); the download may have been "
        "cut off or the file is not a complete .tar.gz."
    )


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    if member.issparse():
        return "sparse file"
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
