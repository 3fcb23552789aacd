"""An in-memory store: a :class:`~flexingest.connectors.Storage` over fsspec's ``memory://``
filesystem, so that tests of the pass need no emulator and run in milliseconds.

It behaves as a cloud connector does where the pass can tell: a listing in pages of
:class:`~flexingest.objects.ObjectInfo` in key order, under a prefix, folder placeholders
left out; an ETag-like version token (the MD5 of the content, so rewriting the same bytes
changes nothing); reads that say which version they read; a missing bucket, a missing object
and a library's exception translated by :mod:`flexingest.connectors.errors` as for any backend.

Keys are relative to the bucket (``/<bucket>/<key>`` in the filesystem). Each
:func:`memory_storage` has a filesystem of its own (fsspec's ``global_store=False``): tests in
one process never see each other's objects. Two hooks let a test make the world change under a
pass: ``after_listing`` runs once the listing is complete (an object deleted or overwritten
between the listing and the read), and ``fail_listing_after`` raises ``listing_error`` after
that many pages (a listing that breaks partway; ``max_page`` makes pages small enough for
that).
"""

from __future__ import annotations

import hashlib
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Literal

from fsspec.implementations.memory import MemoryFileSystem
from pydantic import Field

from flexingest.connectors.base import PAGE_SIZE, Storage
from flexingest.exceptions import ObjectGone
from flexingest.models import ConnectorBase, Strict
from flexingest.objects import ObjectInfo


class MemoryConfig(Strict):
    bucket: str = Field(min_length=1, description="the bucket's name: keys live under /<bucket>/")


class MemoryConnector(ConnectorBase):
    type: Literal["memory"]
    config: MemoryConfig

    url_schemes = ("memory",)


def version_of(data: bytes) -> str:
    """The version token of content, as S3 gives a single-part upload's ETag."""
    return hashlib.md5(data).hexdigest()


class MemoryStorage(Storage):
    """A bucket in memory; ``put``, ``delete`` and ``keys`` change and inspect it directly."""

    kind = "memory"
    protocol = "memory"

    def __init__(self, connector: ConnectorBase, base_dir: Path, **kwargs: Any) -> None:
        super().__init__(connector, base_dir, **kwargs)
        self.after_listing: Callable[[], object] | None = None
        self.fail_listing_after: int | None = None
        self.max_page: int | None = None  # smaller pages than the pass asks for
        self.listing_error: BaseException = ConnectionResetError(104, "Connection reset by peer")
        self.reads = 0  # whole reads of objects, for tests that count requests

    # -- what the pass asks of a store

    @property
    def root(self) -> str:
        return str(self.config.bucket)

    def _make_fs(self) -> MemoryFileSystem:
        return MemoryFileSystem(global_store=False, skip_instance_cache=True)

    def iter_pages(self, prefix: str = "", page_size: int = PAGE_SIZE) -> Iterator[list[ObjectInfo]]:
        size = page_size if self.max_page is None else min(page_size, self.max_page)
        token: int | None = 0
        pages = 0
        while token is not None:
            with self.errors():
                if self.fail_listing_after is not None and pages >= self.fail_listing_after:
                    raise self.listing_error
                objects, token = self._page(prefix, token, size)
            pages += 1
            if objects:
                yield objects
            if page_size == 1:  # check(): one bounded request
                break
        if self.after_listing is not None:
            self.after_listing()

    def _page(self, prefix: str, start: int, page_size: int) -> tuple[list[ObjectInfo], int | None]:
        """Objects ``start`` to ``start + page_size`` under ``prefix``, and the next page's offset."""
        fs = self.fs
        if not fs.isdir(self.root):
            raise FileNotFoundError(2, "No such bucket", self.root)
        base = f"/{self.root}/"
        keys = [name[len(base):] for name in fs.find(self.root)]
        keys = [k for k in keys if k.startswith(prefix) and not k.endswith("/")]
        page = keys[start: start + page_size]
        infos = [self._info(fs.info(base + k), k) for k in page]
        more = start + page_size < len(keys)
        return infos, (start + page_size if more else None)

    def info(self, key: str) -> ObjectInfo:
        with self.errors(key):
            detail = self.fs.info(self.path(key))
            if detail["type"] != "file":
                raise ObjectGone(f"{self.describe(key)}: not an object")
            return self._info(detail, key)

    def _info(self, detail: dict[str, Any], key: str) -> ObjectInfo:
        path = detail["name"]
        data = self.fs.cat_file(path)
        return ObjectInfo(key, version_of(data), len(data), self.fs.modified(path).timestamp())

    def read_versioned(self, key: str) -> tuple[bytes, str | None]:
        with self.errors(key):
            data: bytes = self.fs.cat_file(self.path(key))
        self.reads += 1
        return data, version_of(data)

    def read(self, key: str) -> bytes:
        return self.read_versioned(key)[0]

    def open(self, key: str) -> IO[bytes]:
        return io.BytesIO(self.read(key))

    def open_versioned(self, key: str) -> tuple[IO[bytes], str | None]:
        data, version = self.read_versioned(key)
        return io.BytesIO(data), version

    stream_versioned = open_versioned

    # -- for tests

    def put(self, key: str, data: bytes, *, modified: float | None = None) -> str:
        """Write an object (``modified``: its time, in seconds since the epoch); its version."""
        path = self.path(key)
        self.fs.pipe_file(path, data)
        if modified is not None:
            self.fs.store[self.fs._strip_protocol(path)].modified = datetime.fromtimestamp(modified, timezone.utc)
        return version_of(data)

    def delete(self, key: str) -> None:
        self.fs.rm_file(self.path(key))

    def keys(self) -> list[str]:
        base = f"/{self.root}/"
        return [name[len(base):] for name in self.fs.find(self.root)]


def memory_storage(name: str, base_dir: Path, bucket: str = "bucket", *, create: bool = True) -> MemoryStorage:
    """A new, empty in-memory bucket opened as connector ``name`` (``create=False``: the bucket
    does not exist)."""
    connector = MemoryConnector(name=name, id=None, type="memory", config=MemoryConfig(bucket=bucket))
    storage = MemoryStorage(connector, base_dir)
    if create:
        storage.fs.mkdir(storage.root)
    return storage
