"""``unpack``: a zip or tar (plain, gzip, bz2, xz, zstd) object becomes one record per member.

Each member goes through the steps after ``unpack`` with the key
``<archive key>!/<member path>``, the archive's connector, sync and version, and
``metadata.archive`` (the archive's key) and ``metadata.member``. The archive type comes
from the content; any other object (zip-based documents included: DOCX, XLSX, ODT, EPUB
...) passes through unchanged.

Bounds: ``max_members``, ``max_member_size`` and ``max_total_size`` (of what the members
expand to, checked before a byte is decompressed where the archive declares sizes, and
while reading everywhere). Member names are checked like keys (no ``..``, absolute
paths, backslashes, NUL): an unsafe name fails the object (``unsafe_members: fail``) or
is skipped. Links, devices and folders in tars are skipped; encrypted zip members fail.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import PurePosixPath
from typing import IO, Any, Iterator, Literal

from pydantic import ByteSize, Field

from ..exceptions import UnprocessableObject, UnsafeKey
from ..extract import compress, package
from ..objects import Source, check_key
from ..units import Size
from . import Fanout, ObjectSource, Record, Step, StepOptions

log = logging.getLogger(__name__)
SPOOL = 8 * 1024 * 1024
SEPARATOR = "!/"


class UnpackOptions(StepOptions):
    max_members: int = Field(10_000, ge=1, description="archives with more members fail")
    max_member_size: Size = Field(ByteSize(256 * 1024 * 1024), description="a member expanding beyond this fails")
    max_total_size: Size = Field(ByteSize(1024 * 1024 * 1024),
                                 description="members expanding to more than this in all fail (bomb guard)")
    unsafe_members: Literal["fail", "skip"] = Field(
        "fail", description="a member name with '..', an absolute path, a backslash or NUL fails the object, or "
                            "is skipped")


class MemberSource:
    """One archive member, with the surface of :class:`flexingest.connectors.Source`."""

    def __init__(self, archive: ObjectSource, name: str, data: IO[bytes], size: int) -> None:
        self.archive = archive
        self.name = name
        self._data = data
        self._size = size
        self.read_version: str | None = None

    @property
    def key(self) -> str:
        return f"{self.archive.key}{SEPARATOR}{self.name}"

    @property
    def version(self) -> str:
        return self.archive.version

    @property
    def size(self) -> int:
        return self._size

    @property
    def connector(self) -> str:
        return self.archive.connector

    def open(self) -> IO[bytes]:
        """A seekable reader of the member (its own handle: closing it leaves the member readable)."""
        self._data.seek(0)
        if self._size < SPOOL:
            return io.BytesIO(self._data.read())
        copy = tempfile.TemporaryFile(prefix="flexingest-member-")
        shutil.copyfileobj(self._data, copy, 1 << 20)
        copy.seek(0)
        return copy

    def read(self) -> bytes:
        self._data.seek(0)
        return self._data.read()

    def stream(self) -> IO[bytes]:
        return self.open()

    @contextlib.contextmanager
    def local_path(self) -> Iterator[str]:
        suffix = PurePosixPath(self.name).suffix[:16]
        with tempfile.TemporaryDirectory(prefix="flexingest-") as tmp:
            path = f"{tmp}/member{suffix}"
            with open(path, "wb") as out:
                self._data.seek(0)
                shutil.copyfileobj(self._data, out, 1 << 20)
            yield path


class Unpack(Step):
    Options = UnpackOptions
    options: UnpackOptions

    def process(self, record: Record, source: Source) -> Record | Fanout:
        stream = source.open()
        try:
            kind = self._kind(stream)
        except BaseException:
            stream.close()
            raise
        if kind is None:
            stream.close()
            return record
        return Fanout(self._members(record, source, stream, kind))

    @staticmethod
    def _kind(stream: IO[bytes]) -> str | None:
        stream.seek(0)
        head = stream.read(512)
        stream.seek(0)
        if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            from ..extract.detect import _zip_kind

            kind = _zip_kind(stream)  # a DOCX, XLSX, ODT or EPUB is a document, not an archive
            stream.seek(0)
            return "zip" if kind == "zip" else None
        if len(head) >= 262 and head[257:262] == b"ustar":
            return "tar"
        compression = compress.detect(stream, "")
        if compression is not None:
            return compression
        if len(head) >= 512 and _old_tar(head):
            return "tar"
        return None

    def _members(self, record: Record, source: Source, stream: IO[bytes],
                 kind: str) -> Iterator[tuple[Record, ObjectSource]]:
        with contextlib.ExitStack() as stack:
            stack.callback(stream.close)
            if kind == "zip":
                yield from self._zip(record, source, stream)
                return
            if kind != "tar":  # compressed: a tar inside, decompressed (bounded) into a spool
                spool = stack.enter_context(tempfile.SpooledTemporaryFile(max_size=SPOOL, prefix="flexingest-"))
                compress.copy_bounded(compress.open_decompressor(stream, kind), spool,
                                      int(self.options.max_total_size), kind)
                spool.seek(0)
                if not self._is_tar(spool):
                    raise UnprocessableObject(f"a {kind}-compressed object that is not a tar archive: unpack reads "
                                              "zip and tar archives (extract_text reads a compressed document)")
                stream = spool
            yield from self._tar(record, source, stream)

    @staticmethod
    def _is_tar(stream: IO[bytes]) -> bool:
        head = stream.read(512)
        stream.seek(0)
        return len(head) >= 262 and (head[257:262] == b"ustar" or _old_tar(head))

    def _name(self, name: str) -> str | None:
        """The member's checked name, or None to skip it (UnsafeKey when it must fail)."""
        while name.startswith("./"):
            name = name[2:]
        try:
            check_key(name)
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise UnsafeKey(name, "is not UTF-8 text") from None
        except UnsafeKey as exc:
            if self.options.unsafe_members == "skip":
                log.info("unpack: skipping member %r: %s", name, exc)
                return None
            raise UnprocessableObject(f"unsafe member name in the archive: {exc}; the archive will not change on "
                                      "retry (unsafe_members: skip leaves such members out)") from None
        return name

    def _zip(self, record: Record, source: Source, stream: IO[bytes]) -> Iterator[tuple[Record, ObjectSource]]:
        try:
            zf = zipfile.ZipFile(stream)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise UnprocessableObject(f"not a readable zip archive ({exc}); it will not change on retry") from None
        with zf:
            members = [info for info in zf.infolist() if not info.is_dir()]
            self._check_count(len(members))
            package.check_members(members, int(self.options.max_total_size), "the zip archive")
            for info in members:
                if info.file_size > self.options.max_member_size:
                    raise UnprocessableObject(f"member {info.filename!r} expands to {info.file_size} bytes, more than "
                                              f"max_member_size ({int(self.options.max_member_size)})")
            for info in members:
                name = self._name(info.filename)
                if name is None:
                    continue
                with tempfile.SpooledTemporaryFile(max_size=SPOOL, prefix="flexingest-member-") as data:
                    try:
                        with zf.open(info) as member:
                            shutil.copyfileobj(member, data, 1 << 20)
                    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as exc:
                        raise UnprocessableObject(f"member {info.filename!r} is corrupt: {exc}") from None
                    yield self._pair(record, source, name, data, info.file_size)

    def _tar(self, record: Record, source: Source, stream: IO[bytes]) -> Iterator[tuple[Record, ObjectSource]]:
        try:
            tf = tarfile.open(fileobj=stream, mode="r:")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise UnprocessableObject(f"not a readable tar archive ({exc}); it will not change on retry") from None
        with tf:
            count = 0
            total = 0
            try:
                for info in tf:
                    count += 1
                    self._check_count(count)
                    if info.isdir():
                        continue
                    if not info.isreg():
                        what = "link" if info.issym() or info.islnk() else "device, FIFO or special file"
                        log.info("unpack: skipping %s %r in %s", what, info.name, source.key)
                        continue
                    if info.size > self.options.max_member_size:
                        raise UnprocessableObject(f"member {info.name!r} is {info.size} bytes, more than "
                                                  f"max_member_size ({int(self.options.max_member_size)})")
                    total += info.size
                    if total > self.options.max_total_size:
                        raise UnprocessableObject(f"the members add up to more than max_total_size "
                                                  f"({int(self.options.max_total_size)} bytes)")
                    name = self._name(info.name)
                    if name is None:
                        continue
                    member = tf.extractfile(info)
                    if member is None:
                        continue
                    with tempfile.SpooledTemporaryFile(max_size=SPOOL, prefix="flexingest-member-") as data:
                        shutil.copyfileobj(member, data, 1 << 20)
                        yield self._pair(record, source, name, data, info.size)
            except tarfile.TarError as exc:
                raise UnprocessableObject(f"corrupt tar archive: {exc}; it will not change on retry") from None

    def _check_count(self, count: int) -> None:
        if count > self.options.max_members:
            raise UnprocessableObject(f"the archive has more than max_members ({self.options.max_members}) members")

    @staticmethod
    def _pair(record: Record, source: Source, name: str, data: IO[bytes],
              size: int) -> tuple[Record, ObjectSource]:
        member = MemberSource(source, name, data, size)
        metadata: dict[str, Any] = {**record.get("metadata", {}), "archive": source.key, "member": name}
        return {**record, "key": member.key, "size": size, "text": None, "metadata": metadata}, member


def _old_tar(head: bytes) -> bool:
    """A pre-POSIX tar header: its checksum field matches the header's bytes."""
    try:
        stored = int(head[148:156].replace(b"\x00", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    computed = sum(head[:148]) + 8 * 32 + sum(head[156:512])
    return stored == computed
