"""What a step sees of an object: its identity (:class:`ObjectInfo`) and its bytes (:class:`Source`).

Imports nothing of flexingest but the exceptions: connectors implement :class:`Store`,
steps receive a :class:`Source`, and neither needs the other's module. :func:`check_key`
is the one rule for keys that become paths on this machine.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import shutil
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Iterator, NamedTuple, Protocol

from .exceptions import TransientStorageError, UnsafeKey

READ_BLOCK = 4 * 1024 * 1024


class ObjectInfo(NamedTuple):
    """One listed object (a tuple: a bucket of millions lists millions of them)."""

    key: str
    version: str
    size: int
    modified: float | None  # seconds since the epoch


_current: ContextVar[tuple[str, str, int] | None] = ContextVar("flexingest_object", default=None)
_attempts = itertools.count()


@contextlib.contextmanager
def processing(info: ObjectInfo) -> Iterator[None]:
    """Marks the object this thread is processing now (one attempt of it), for steps that keep
    their output until the object's outcome is committed (``write_jsonl``)."""
    token = _current.set((info.key, info.version, next(_attempts)))
    try:
        yield
    finally:
        _current.reset(token)


def current_object() -> tuple[str, str, int] | None:
    """``(key, version, attempt)`` of the object being processed by this thread, if any."""
    return _current.get()


def check_key(key: str) -> list[str]:
    """The path segments of ``key`` when it names a file on this machine, or UnsafeKey.

    Refused: NUL bytes, backslashes, absolute paths, empty, ``.`` and ``..`` segments,
    segments longer than 255 bytes. Keys of a local connector and of local destinations
    follow this one rule.
    """
    if "\x00" in key:
        raise UnsafeKey(key, "contains a NUL byte")
    if "\\" in key:
        raise UnsafeKey(key, "contains a backslash")
    if key.startswith("/"):
        raise UnsafeKey(key, "is an absolute path")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafeKey(key, "has an empty, '.' or '..' path segment")
        if len(part.encode("utf-8", "surrogatepass")) > 255:
            raise UnsafeKey(key, "has a path segment longer than 255 bytes")
    return parts


class Store(Protocol):
    """What a :class:`Source` asks of an opened connector (see ``flexingest.connectors``)."""

    @property
    def name(self) -> str: ...

    def describe(self, key: str | None = None) -> str: ...

    def info(self, key: str) -> ObjectInfo: ...

    def read_versioned(self, key: str) -> tuple[bytes, str | None]: ...

    def open_versioned(self, key: str) -> tuple[IO[bytes], str | None]: ...

    def stream_versioned(self, key: str) -> tuple[IO[bytes], str | None]: ...

    def local_file(self, key: str) -> str | None: ...


class Source:
    """The object a step is processing: its identity, and ways to get at its bytes.

    Every read notes the version it read; a pass records that version, so what is
    recorded is what was processed even if the object is overwritten meanwhile. A small
    object is read once, whatever the number of steps that read it.
    """

    SMALL = 8 * 1024 * 1024  # below this, one request reads the object whole, and it is kept

    def __init__(self, store: Store, info: ObjectInfo) -> None:
        self.store = store
        self.info = info
        self.read_version: str | None = None
        self._data: bytes | None = None

    @property
    def connector(self) -> str:
        return self.store.name

    @property
    def key(self) -> str:
        return self.info.key

    @property
    def version(self) -> str:
        return self.info.version

    @property
    def size(self) -> int:
        return self.info.size

    def _saw(self, version: str | None) -> None:
        if version is None:
            return
        if self.read_version is None:
            self.read_version = version
        elif version != self.read_version:
            raise TransientStorageError(f"{self.store.describe(self.key)}: changed while it was being processed")

    def open(self) -> IO[bytes]:
        """A seekable reader; large objects are streamed, never held whole in memory."""
        if self.size < self.SMALL:
            return io.BytesIO(self.read())
        reader, version = self.store.open_versioned(self.key)
        self._saw(version)
        return reader

    def read(self) -> bytes:
        """The whole object in memory: for small objects only. Read once, then kept."""
        if self._data is not None:
            return self._data
        data, version = self.store.read_versioned(self.key)
        self._saw(version)
        if len(data) < self.SMALL:
            self._data = data
        return data

    def stream(self) -> IO[bytes]:
        """A sequential, not seekable reader over one request: for copying large objects."""
        if self._data is not None:
            return io.BytesIO(self._data)
        reader, version = self.store.stream_versioned(self.key)
        self._saw(version)
        return reader

    @contextlib.contextmanager
    def local_path(self) -> Iterator[str]:
        """A path on this machine holding the object (a temporary copy for clouds)."""
        path = self.store.local_file(self.key)
        if path is not None:
            self._saw(self.store.info(self.key).version)
            yield path
            return
        import tempfile

        suffix = Path(self.key).suffix[:16]
        with tempfile.TemporaryDirectory(prefix="flexingest-") as tmp:
            dest = Path(tmp) / f"object{suffix}"
            with self.stream() as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, READ_BLOCK)
            yield str(dest)
