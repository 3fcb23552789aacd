"""Zip-based documents (OOXML, ODF, EPUB): opened with bounds on what members expand to.

A member whose declared size exceeds ``max_decompressed``, members adding up to more
than that, or a member that expands more than :data:`MAX_RATIO` times are refused
before anything is decompressed; ``zipfile`` then never reads past a declared size.
"""

from __future__ import annotations

import contextlib
import zipfile
from typing import IO, Iterator
from xml.etree import ElementTree

from ..exceptions import UnprocessableObject
from . import Settings

MAX_RATIO = 200  # deflate tops out near 1000:1 for runs of one byte; documents stay far below 100:1
SMALL = 1 << 20  # members under this may compress as well as they like


@contextlib.contextmanager
def open_package(stream: IO[bytes], settings: Settings, what: str) -> Iterator[zipfile.ZipFile]:
    stream.seek(0)
    try:
        zf = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise UnprocessableObject(f"cannot read {what}: not a valid zip package ({exc}); "
                                  "the object's bytes will not change on retry") from None
    try:
        check_members(zf.infolist(), settings.max_decompressed, what)
        yield zf
    except (zipfile.BadZipFile, EOFError, ElementTree.ParseError, KeyError, ValueError,
            NotImplementedError) as exc:
        raise UnprocessableObject(f"cannot read {what}: {type(exc).__name__}: {exc}; "
                                  "the object's bytes will not change on retry") from None
    except RuntimeError as exc:  # zipfile: "File ... is encrypted, password required"
        raise UnprocessableObject(f"cannot read {what}: {exc}") from None
    finally:
        zf.close()


def check_members(members: list[zipfile.ZipInfo], limit: int, what: str) -> None:
    total = 0
    for info in members:
        total += info.file_size
        if info.file_size > limit or total > limit:
            raise UnprocessableObject(f"{what} expands to more than max_decompressed ({limit} bytes): refused as a "
                                      "possible zip bomb")
        if info.file_size > SMALL and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            ratio = info.file_size // max(info.compress_size, 1)
            raise UnprocessableObject(f"{what} member {info.filename!r} expands {ratio} times ({info.compress_size} -> "
                                      f"{info.file_size} bytes): refused as a zip bomb")
        if info.flag_bits & 0x1:
            raise UnprocessableObject(f"{what} is encrypted (member {info.filename!r}): it cannot be read "
                                      "without its password, on retry either")


def parse(zf: zipfile.ZipFile, name: str) -> ElementTree.Element:
    """A member parsed as XML (members were bounded by :func:`check_members`)."""
    with zf.open(name) as member:
        return ElementTree.parse(member).getroot()


def exists(zf: zipfile.ZipFile, name: str) -> bool:
    try:
        zf.getinfo(name)
        return True
    except KeyError:
        return False


def resolve(base: str, target: str) -> str:
    """A relationship target relative to the part ``base`` (``word/document.xml``)."""
    if target.startswith("/"):
        return target[1:]
    parts = base.split("/")[:-1]
    for piece in target.split("/"):
        if piece == "..":
            if parts:
                parts.pop()
        elif piece not in ("", "."):
            parts.append(piece)
    return "/".join(parts)
