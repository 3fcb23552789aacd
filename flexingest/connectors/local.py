"""``local`` connectors: a folder on this machine. The version token is the file's
modification time in nanoseconds and its size. Keys name files under the folder only
(:func:`flexingest.objects.check_key`); links to folders are never followed."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import IO, Iterator, Literal

from pydantic import Field

from ..exceptions import AccessDenied, BucketNotFound, ObjectGone, StorageError, UnsafeKey
from ..models import ConnectorBase, Strict
from ..objects import ObjectInfo, check_key
from .base import PAGE_SIZE, Storage


class LocalStorage(Storage):
    kind = "local"
    protocol = "file"

    _root: str | None = None
    _real_root: str | None = None
    #: keys shown for files whose names are not UTF-8 (bytes as \\xNN): listed, and failed
    _undecodable: set[str] | None = None

    @property
    def root(self) -> str:
        if self._root is None:
            p = Path(self.config.path).expanduser()
            self._root = str(p if p.is_absolute() else (self.base_dir / p).resolve())
        return self._root

    def path(self, key: str) -> str:
        """The file of ``key``; a key that could name a file outside the folder is refused.

        Listed keys are always safe; this guards keys given to ``flexingest process``.
        """
        if self._undecodable and key in self._undecodable:
            raise StorageError(f"{self.describe(key)}: the file name is not UTF-8 text (its odd bytes are shown "
                               "as \\xNN); keys are text: rename the file")
        parts = check_key(key)
        return os.path.join(self.root, *parts)

    def describe(self, key: str | None = None) -> str:
        return os.path.join(self.root, key) if key else self.root

    def iter_pages(self, prefix: str = "", page_size: int = PAGE_SIZE) -> Iterator[list[ObjectInfo]]:
        root = self.root
        if not os.path.isdir(root):
            raise BucketNotFound(f"{root}: folder not found" if not os.path.exists(root) else f"{root}: not a folder")
        if not os.access(root, os.R_OK | os.X_OK):
            raise AccessDenied(f"{root}: access denied (cannot read the folder)")
        start = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        page: list[ObjectInfo] = []
        for key, st in self._walk(os.path.join(root, *start.split("/")) if start else root,
                                  f"{start}/" if start else ""):
            if _SURROGATE.search(key) is not None:  # a name in bytes that are not UTF-8
                key = key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                if self._undecodable is None:
                    self._undecodable = set()
                self._undecodable.add(key)
            if key.startswith(prefix):
                page.append(ObjectInfo(key, f"{st.st_mtime_ns}-{st.st_size}", st.st_size, st.st_mtime))
                if len(page) >= page_size:
                    yield page
                    page = []
                    if page_size == 1:
                        return
        yield page

    def _walk(self, folder: str, rel: str) -> Iterator[tuple[str, os.stat_result]]:
        """Files below ``folder`` with their stat, depth first, without holding the tree."""
        try:
            it = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return
        except PermissionError as exc:
            raise AccessDenied(f"{folder}: access denied ({exc.strerror})") from None
        with it:
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        yield from self._walk(entry.path, f"{rel}{entry.name}/")
                    elif entry.is_file():
                        yield f"{rel}{entry.name}", entry.stat()
                except FileNotFoundError:
                    continue  # deleted while listing

    def info(self, key: str) -> ObjectInfo:
        path = self.path(key)
        if "/" in key:  # the listing never enters a linked folder; neither does a given key
            if self._real_root is None:
                self._real_root = os.path.realpath(self.root)
            if not os.path.realpath(os.path.dirname(path)).startswith(self._real_root + os.sep):
                raise UnsafeKey(key, "passes through a symbolic link to a folder")
        with self.errors(key):
            st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ObjectGone(f"{self.describe(key)}: not a file")
        return ObjectInfo(key, f"{st.st_mtime_ns}-{st.st_size}", st.st_size, st.st_mtime)

    def open(self, key: str) -> IO[bytes]:
        with self.errors(key):
            return open(self.path(key), "rb")

    def read(self, key: str) -> bytes:
        return self.read_versioned(key)[0]

    def read_versioned(self, key: str) -> tuple[bytes, str | None]:
        reader, version = self.open_versioned(key)
        with reader, self.errors(key):
            return reader.read(), version

    def open_versioned(self, key: str) -> tuple[IO[bytes], str | None]:
        reader = self.open(key)
        st = os.fstat(reader.fileno())  # the file actually opened, whatever happens to the name
        return reader, f"{st.st_mtime_ns}-{st.st_size}"

    stream_versioned = open_versioned

    def local_file(self, key: str) -> str:
        return self.path(key)


class LocalConfig(Strict):
    path: str = Field(min_length=1, description="a folder; relative paths resolve against the pipeline file")


class LocalConnector(ConnectorBase):
    type: Literal["local"]
    config: LocalConfig

    url_schemes = ("file", "local")



_SURROGATE = re.compile("[\ud800-\udfff]")




CONNECTOR = LocalConnector
STORAGE = LocalStorage
