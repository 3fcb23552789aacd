"""What every connector is: :class:`Storage`, an opened connector, and what a pass asks of it.

It lists keys page by page with their version tokens (S3 ETag, GCS generation, Azure ETag,
local mtime_ns + size), stats and reads objects, noting the version each read returned.
Listing pages are prefetched on the filesystem's event loop; under a prefix with
sub-folders, a few sub-folders are listed at once. Errors are translated by
:mod:`flexingest.connectors.errors`.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

from ..exceptions import BucketNotFound, FlexingestError, ObjectGone
from ..objects import READ_BLOCK, ObjectInfo
from ..redact import Redactor
from .errors import storage_errors

if TYPE_CHECKING:
    import asyncio

    from fsspec import AbstractFileSystem

    from ..models import ConnectorBase

PAGE_SIZE = 1000
LIST_STREAMS = 4  # listings of sub-prefixes in flight at once
MAX_PARTITIONS = 512  # more top-level prefixes than this: one listing stream instead
PREFETCH = 8  # pages listed ahead of the pass


class Storage:
    """An opened connector: its filesystem and what a sync pass asks of it.

    A backend subclasses it, naming its fsspec ``protocol`` and the ``library`` (with the
    pip ``extra``) imported when its filesystem is first needed, and implements
    :meth:`_list_page` and :meth:`_info` (plus faster reads where its library allows).
    ``fast_fail`` builds the filesystem with short timeouts and no retries, for
    ``flexingest test``, which must answer quickly when an endpoint is down.
    """

    kind = ""
    protocol = ""
    library: str | None = None  # the module the filesystem needs, imported on first use
    extra: str | None = None  # what to pip install for it

    def __init__(self, connector: ConnectorBase, base_dir: Path, *, fast_fail: bool = False,
                 timeout: float = 60.0) -> None:
        self.connector = connector
        self.config: Any = connector.config
        self.base_dir = base_dir
        self.fast_fail = fast_fail
        self.timeout = timeout
        self._fs: AbstractFileSystem | None = None
        self._redactor = Redactor(v.get_secret_value() for v in vars(self.config).values()
                                  if hasattr(v, "get_secret_value"))

    # -- naming
    @property
    def name(self) -> str:
        return self.connector.name

    @property
    def root(self) -> str:
        """The bucket, container or folder that keys are relative to."""
        raise NotImplementedError

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def describe(self, key: str | None = None) -> str:
        where = f"{self.connector.type}://{self.root}"
        return f"{where}/{key}" if key else where

    def redact(self, text: str) -> str:
        return self._redactor.mask(text)

    def errors(self, key: str | None = None) -> contextlib.AbstractContextManager[None]:
        return storage_errors(self.describe(key), missing=ObjectGone if key else BucketNotFound,
                              redact=self.redact)

    # -- filesystem
    @property
    def fs(self) -> AbstractFileSystem:
        if self._fs is None:
            self._import_library()
            with storage_errors(self.describe(), redact=self.redact):
                self._fs = self._make_fs()
        return self._fs

    def _import_library(self) -> None:
        if self.library is None:
            return
        try:
            __import__(self.library)
        except ImportError as exc:
            raise FlexingestError(f"connector type {self.kind!r} needs the {self.library} package: "
                                  f"pip install '{self.extra}' ({exc})") from None

    def _make_fs(self) -> AbstractFileSystem:
        import fsspec

        return fsspec.filesystem(self.protocol, **self.options())

    def options(self) -> dict[str, Any]:
        """Keyword arguments for the fsspec filesystem (credentials, endpoint, timeouts)."""
        return {}

    # -- listing
    def iter_pages(self, prefix: str = "", page_size: int = PAGE_SIZE) -> Iterator[list[ObjectInfo]]:
        """Yield the objects under ``prefix``, a page at a time; folder placeholders skipped.

        Pages are listed ahead of the caller on the filesystem's event loop. Under a prefix
        with sub-folders, each sub-folder is listed by its own stream, a few at a time, so
        that the client parses one answer while the server prepares the next.
        """
        from fsspec.asyn import sync

        fs = self.fs
        loop = fs.loop
        with self.errors():
            queue, task = sync(loop, self._start_listing, prefix, page_size)
        try:
            while True:
                with self.errors():
                    item = sync(loop, queue.get)
                    if isinstance(item, BaseException):
                        raise item
                if item is None:
                    return
                yield item
        finally:
            with contextlib.suppress(Exception):
                sync(loop, _cancel, task)

    async def _start_listing(self, prefix: str, page_size: int) -> tuple[asyncio.Queue[Any], asyncio.Task[None]]:
        import asyncio  # imported here: the obstore, GCS-less and local passes never need it

        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=PREFETCH)

        async def stream(under: str, *, delimiter: bool, nested_only: bool = False) -> list[str]:
            """One listing stream into the queue; returns the sub-prefixes it saw."""
            token, prefixes = None, []
            while True:
                objects, subs, token = await self._list_page(under, token, page_size, delimiter)
                if nested_only:  # direct objects were listed already
                    objects = [o for o in objects if "/" in o.key[len(under):]]
                if objects:
                    await queue.put(objects)
                prefixes.extend(subs)
                if not token or page_size == 1:
                    return prefixes

        async def produce() -> None:
            try:
                if page_size == 1:
                    await stream(prefix, delimiter=False)
                else:
                    subs = await stream(prefix, delimiter=True)
                    if len(subs) > MAX_PARTITIONS:
                        await stream(prefix, delimiter=False, nested_only=True)
                    elif subs:
                        gate = asyncio.Semaphore(LIST_STREAMS)

                        async def one(sub: str) -> None:
                            async with gate:
                                await stream(sub, delimiter=False)

                        async with asyncio.TaskGroup() as group:
                            for sub in subs:
                                group.create_task(one(sub))
                await queue.put(None)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, translated there
                while isinstance(exc, BaseExceptionGroup):
                    exc = exc.exceptions[0]
                await queue.put(exc)

        return queue, asyncio.ensure_future(produce())

    async def _list_page(self, prefix: str, token: Any, page_size: int,
                         delimiter: bool) -> tuple[list[ObjectInfo], list[str], Any]:
        """One page of the listing: (objects, sub-prefixes if ``delimiter``, next page's token)."""
        raise NotImplementedError

    def check(self, prefix: str = "") -> None:
        """One bounded request: list at most one key. Raises StorageError on failure."""
        for _ in self.iter_pages(prefix, page_size=1):
            break

    # -- objects
    def info(self, key: str) -> ObjectInfo:
        with self.errors(key):
            return self._info(self.fs.info(self.path(key)), key)

    def _info(self, detail: dict[str, Any], key: str) -> ObjectInfo:
        raise NotImplementedError

    def open(self, key: str) -> IO[bytes]:
        """A streaming, seekable reader that never holds the whole object."""
        with self.errors(key):
            return _ErrorMappingReader(  # type: ignore[return-value]
                self.fs.open(self.path(key), "rb", block_size=READ_BLOCK, cache_type="readahead"), self, key)

    def read(self, key: str) -> bytes:
        with self.errors(key):
            return self.fs.cat_file(self.path(key))  # type: ignore[no-any-return]

    def local_file(self, key: str) -> str | None:
        """The object's own file on this machine, if it has one (local folders)."""
        return None

    def download(self, key: str, dest: Path) -> None:
        with self.open(key) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, READ_BLOCK)

    # Reads that also say which version they read, so that what is recorded is what was
    # processed even when the object is overwritten between the listing and the read.

    def read_versioned(self, key: str) -> tuple[bytes, str | None]:
        """The whole object and its version token, from one request where the backend allows."""
        from fsspec.asyn import sync

        with self.errors(key):
            return sync(self.fs.loop, self._read_versioned, key)  # type: ignore[no-any-return]

    async def _read_versioned(self, key: str) -> tuple[bytes, str | None]:
        return await self.fs._cat_file(self.path(key)), None

    def stream_versioned(self, key: str) -> tuple[IO[bytes], str | None]:
        """A sequential reader over one request (no ranged re-reads), and the version it reads."""
        from fsspec.asyn import sync

        with self.errors(key):
            read, close, version = sync(self.fs.loop, self._open_stream, key)
        return _ErrorMappingReader(_AsyncStream(self.fs.loop, read, close), self, key), version  # type: ignore[return-value]

    async def _open_stream(self, key: str) -> tuple[Any, Any, str | None]:
        raise NotImplementedError  # backends without a streaming GET use open_versioned

    def open_versioned(self, key: str) -> tuple[IO[bytes], str | None]:
        """A streaming reader and the version it reads (from the file's details)."""
        reader = self.open(key)
        with self.errors(key):
            details = getattr(getattr(reader, "_raw", reader), "details", None)
            version = self._info(details, key).version if details else None
        return reader, version or None


async def _cancel(task: asyncio.Task[Any]) -> None:
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


class _ErrorMappingReader:
    """Wraps a library's file so that every read error comes out as a flexingest error."""

    def __init__(self, raw: Any, storage: Storage, key: str) -> None:
        self._raw = raw
        self._storage = storage
        self._key = key

    def read(self, size: int = -1) -> bytes:
        with self._storage.errors(self._key):
            return self._raw.read(size)  # type: ignore[no-any-return]

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, size: int = -1) -> bytes:
        with self._storage.errors(self._key):
            return self._raw.readline(size)  # type: ignore[no-any-return]

    def seek(self, offset: int, whence: int = 0) -> int:
        with self._storage.errors(self._key):
            return self._raw.seek(offset, whence)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __enter__(self) -> _ErrorMappingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class _AsyncStream(io.RawIOBase):
    """A file over an async ``read(n)`` running on the filesystem's event loop."""

    def __init__(self, loop: Any, read: Callable[[int], Any], close: Callable[[], Any]) -> None:
        super().__init__()
        self._loop, self._read, self._close = loop, read, close

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from fsspec.asyn import sync

        data = sync(self._loop, self._read, len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        from fsspec.asyn import sync

        if size is None or size < 0:
            chunks = []
            while chunk := sync(self._loop, self._read, READ_BLOCK):
                chunks.append(chunk)
            return b"".join(chunks)
        return sync(self._loop, self._read, size)  # type: ignore[no-any-return]

    def close(self) -> None:
        if not self.closed:
            from fsspec.asyn import sync

            with contextlib.suppress(Exception):
                sync(self._loop, self._close)
        super().close()


def _timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _parse_timestamp(value: str) -> datetime:
    """ISO 8601 (listings) and RFC 7231 (headers) timestamps, as aware datetimes."""
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        pass
    try:
        import email.utils

        parsed = email.utils.parsedate_to_datetime(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        from botocore.utils import parse_timestamp

        return parse_timestamp(value)  # type: ignore[no-any-return]
