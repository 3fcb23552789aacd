"""gzip, bz2, xz and zstd objects, decompressed as a stream into a bounded spool.

The compression is found from the first bytes (the extension only names the inner
document: ``report.pdf.gz`` holds ``report.pdf``). What decompresses goes into a spooled
temporary file (in memory up to 8 MiB, then on disk) that stops at ``max_decompressed``
bytes: a decompression bomb fails at once and never fills memory.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import tempfile
import zlib
from typing import IO, Iterator

from ..exceptions import UnprocessableObject

MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
SUFFIXES = {"gzip": (".gz", ".gzip"), "bzip2": (".bz2",), "xz": (".xz",), "zstd": (".zst", ".zstd")}
SPOOL = 8 * 1024 * 1024
BLOCK = 1 << 20


def detect(stream: IO[bytes], key: str) -> str | None:
    stream.seek(0)
    head = stream.read(6)
    stream.seek(0)
    for magic, name in MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def inner_name(key: str, compression: str) -> str:
    """``a/report.pdf.gz`` -> ``a/report.pdf``; ``data.tgz`` -> ``data.tar``."""
    lowered = key.lower()
    for suffix in SUFFIXES[compression]:
        if lowered.endswith(suffix):
            return key[: -len(suffix)]
    if lowered.endswith((".tgz", ".tbz2", ".txz")):
        return key[: key.rfind(".")] + ".tar"
    return key


def open_decompressor(stream: IO[bytes], compression: str) -> IO[bytes]:
    """A reader of the decompressed bytes (for zstd, the ``zstandard`` package is needed)."""
    if compression == "gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    if compression == "bzip2":
        return bz2.BZ2File(stream, "rb")
    if compression == "xz":
        return lzma.LZMAFile(stream, "rb")
    try:
        import zstandard
    except ImportError:
        from ..exceptions import StepError
        from . import DOCUMENTS_EXTRA

        raise StepError(f"a zstd-compressed object needs the zstandard package: {DOCUMENTS_EXTRA}") from None
    reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
    return reader


@contextlib.contextmanager
def decompressed(stream: IO[bytes], compression: str, limit: int) -> Iterator[IO[bytes]]:
    """A seekable file of the decompressed object; UnprocessableObject past ``limit`` bytes."""
    stream.seek(0)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL, prefix="flexingest-") as spool:
        copy_bounded(open_decompressor(stream, compression), spool, limit, compression)
        spool.seek(0)
        yield spool


def copy_bounded(reader: IO[bytes], out: IO[bytes], limit: int, what: str) -> int:
    """Copy ``reader`` into ``out``, refusing more than ``limit`` bytes."""
    total = 0
    try:
        with reader:
            while True:
                block = reader.read(BLOCK)
                if not block:
                    return total
                total += len(block)
                if total > limit:
                    raise UnprocessableObject(
                        f"{what} object decompresses to more than max_decompressed ({limit} bytes): refused as a "
                        "possible decompression bomb (raise max_decompressed if it is genuine)")
                out.write(block)
    except (UnprocessableObject, ConnectionError, TimeoutError):
        raise  # a storage read failing is not the data's fault
    except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
        raise UnprocessableObject(f"corrupt {what} data: {exc}; the object's bytes will not change on retry") \
            from None
    except Exception as exc:  # zstandard.ZstdError, imported lazily
        if type(exc).__name__ == "ZstdError":
            raise UnprocessableObject(f"corrupt {what} data: {exc}; the object's bytes will not change on retry") \
                from None
        raise
