"""Writing one output per object to a destination URL, shared by ``write_json`` and ``copy``.

Local destinations refuse keys that could escape them and write through a temporary
file renamed into place, so that a crash never leaves a partial output. Remote
destinations rely on the store's own atomic puts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from typing import IO, Callable

from pydantic import Field

from ..exceptions import StepError, UnsafeKey
from . import Step, StepContext, StepOptions

CHUNK = 4 * 1024 * 1024


class DestinationOptions(StepOptions):
    url: str = Field(min_length=1, description="an fsspec URL or a local folder (relative to the pipeline file)")
    connector: str | None = Field(
        None, description="a declared connector whose credentials open `url`; `url` is then a path in its bucket")


def check_key(key: str) -> list[str]:
    """The path segments of ``key`` for a local destination, or UnsafeKey."""
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


class Destination:
    """``<url>/<key><suffix>`` on any fsspec filesystem."""

    def __init__(self, options: DestinationOptions, context: StepContext) -> None:
        from fsspec.implementations.local import LocalFileSystem

        self.fs, root = context.open_destination(options.url, options.connector)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = os.path.realpath(root) if self.local else root.rstrip("/")
        # folders already checked to resolve inside the destination, and known to exist:
        # a bucket of many objects in few folders pays realpath and makedirs once per folder
        self._checked: set[str] = set()
        self._made: set[str] = set()

    def target(self, key: str, suffix: str = "") -> str:
        if not self.local:
            return f"{self.root}/{key}{suffix}"
        parts = check_key(key)
        if len((parts[-1] + suffix).encode()) > 255:
            raise UnsafeKey(key, "its file name is longer than 255 bytes")
        path = os.path.join(self.root, *parts[:-1], parts[-1] + suffix)
        folder = os.path.dirname(path)
        if folder not in self._checked:
            parent = os.path.realpath(folder)
            if parent != self.root and not parent.startswith(self.root + os.sep):
                raise UnsafeKey(key, "resolves outside the destination (through a symbolic link)")
            if parent == folder:  # no link on the way: a later link there would be ours to make
                self._checked.add(folder)
        return path

    def write_bytes(self, key: str, data: bytes, suffix: str = "") -> str:
        path = self.target(key, suffix)
        if self.local:
            self._write_local(path, lambda out: out.write(data))
        else:
            self.fs.pipe_file(path, data)
        return path

    def write_stream(self, key: str, src: IO[bytes], suffix: str = "") -> str:
        path = self.target(key, suffix)
        if self.local:
            self._write_local(path, lambda out: shutil.copyfileobj(src, out, CHUNK))
        else:
            with self.fs.open(path, "wb", block_size=max(CHUNK, 5 * 1024 * 1024)) as out:
                shutil.copyfileobj(src, out, CHUNK)
        return path

    def _write_local(self, path: str, write: Callable[[IO[bytes]], object]) -> None:
        folder, name = os.path.split(path)
        if folder not in self._made:
            try:
                os.makedirs(folder, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise StepError(f"cannot create folder {folder}: a file of that name is in the way") from None
            self._made.add(folder)
        try:
            # An unnamed file (O_TMPFILE) vanishes by itself if the process dies while writing
            fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o644)
            unnamed = True
        except (AttributeError, OSError):
            fd, tmp = tempfile.mkstemp(prefix=f".{name[:100]}.", suffix=".part", dir=folder)
            unnamed = False
        try:
            with os.fdopen(fd, "wb", closefd=not unnamed) as out:
                write(out)
                out.flush()
            if unnamed:
                try:  # a new output: give the complete file its name in one step
                    _link_unnamed(fd, path)
                    return
                except FileExistsError:  # an older copy: replace it atomically through a named temporary
                    tmp = os.path.join(folder, f".{name[:100]}.{os.getpid()}.{threading.get_ident()}.part")
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                    _link_unnamed(fd, tmp)
            try:
                os.replace(tmp, path)
            except IsADirectoryError:
                raise StepError(f"cannot write {path}: a folder of that name is in the way") from None
        except BaseException:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp)
            raise
        finally:
            if unnamed:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _link_unnamed(fd: int, dest: str) -> None:
    """Give an O_TMPFILE file a name (linkat with AT_SYMLINK_FOLLOW through /proc)."""
    folder, name = os.path.split(dest)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # a dir_fd makes Python call linkat(), which follows the /proc link to the file
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
    finally:
        os.close(dir_fd)


class DestinationStep(Step):
    """A step that writes one output per object to ``url`` (``copy``, ``write_json``)."""

    Options = DestinationOptions
    options: DestinationOptions

    def __init__(self, options: DestinationOptions, context: StepContext) -> None:
        super().__init__(options, context)
        self.destination = Destination(options, context)
