"""Destinations: where steps write one output per object, and the boundary of their errors.

A destination is a folder on this machine or a place in a store (``s3://``, ``gs://``,
``abfs://``, any fsspec URL, or a path in a declared connector's bucket). Every error a
destination raises is translated here into a :class:`~flexingest.exceptions.DestinationError`
that names the destination, never the source object: a destination that is missing or
refuses us is :class:`~flexingest.exceptions.DestinationUnavailable` (the pass stops and
nothing is charged), one that is unreachable or overloaded is a transient failure.

Local outputs are durable before an object is recorded done: each file is written as an
unnamed file (``O_TMPFILE``), fsync'ed, then given its name in one step; folders that
gained a name are fsync'ed in :meth:`Destination.flush`. Replacing an existing output goes
through a named temporary in ``<destination>/.flexingest-tmp/``, which a later pass cleans
if a crash left one behind.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Iterator

from .exceptions import (
    AccessDenied,
    BucketNotFound,
    DestinationError,
    DestinationUnavailable,
    FlexingestError,
    ObjectGone,
    StepError,
    UnsafeKey,
)
from .objects import check_key

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from .config import Pipeline

CHUNK = 4 * 1024 * 1024
TEMP_FOLDER = ".flexingest-tmp"
_UNAVAILABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}


def open_url(url: str) -> tuple[AbstractFileSystem, str]:
    """The filesystem and path of an fsspec URL (GCS through gcsfs' plain JSON-API class)."""
    protocol = url.split("://", 1)[0]
    try:
        if protocol in ("gs", "gcs"):
            from .connectors import gcs_filesystem

            cls = gcs_filesystem()
            return cls(), str(cls._strip_protocol(url))
        from fsspec.core import url_to_fs

        return url_to_fs(url)  # type: ignore[no-any-return]
    except ImportError as exc:
        raise FlexingestError(f"cannot open {url}: {exc}") from None


def open_destination(pipeline: Pipeline, url: str, connector: str | None) -> tuple[AbstractFileSystem, str]:
    """``(filesystem, path)`` of a step's ``url``, opened with ``connector``'s credentials if given."""
    if connector is not None:
        from .connectors import open_connector

        storage = open_connector(pipeline.connector(connector), pipeline.base_dir)
        if "://" in url:  # a URL of the connector's own kind: any bucket its credentials open
            from .validation import destination_url_problem

            problem = destination_url_problem(url, connector, storage.kind)
            if problem:
                raise FlexingestError(f"destination {url}: {problem}")
            return storage.fs, storage.fs._strip_protocol(url).rstrip("/")
        if storage.kind == "local":
            return storage.fs, os.path.join(storage.root, url)
        return storage.fs, f"{storage.root}/{url.strip('/')}".rstrip("/")
    if "://" not in url:
        path = Path(url).expanduser()
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), str(path if path.is_absolute() else pipeline.base_dir / path)
    return open_url(url)


@contextlib.contextmanager
def destination_errors(where: str) -> Iterator[None]:
    """Translate a store's exceptions while writing to ``where`` (a destination URL)."""
    try:
        yield
    except FlexingestError:
        raise
    except Exception as exc:  # noqa: BLE001 - the one translation point of destinations
        raise as_destination_error(exc, where) from exc


def as_destination_error(exc: Exception, where: str) -> DestinationError:
    from .connectors import translate

    error = translate(exc, where, BucketNotFound)
    detail = str(error)
    if isinstance(error, (BucketNotFound, AccessDenied, ObjectGone)):
        return DestinationUnavailable(f"destination {detail}")
    return DestinationError(f"destination {detail}", transient=error.transient)


class Destination:
    """``<url>/<key><suffix>`` on any fsspec filesystem."""

    def __init__(self, fs: AbstractFileSystem, root: str, url: str) -> None:
        from fsspec.implementations.local import LocalFileSystem

        self.fs = fs
        self.url = url
        self.local = isinstance(fs, LocalFileSystem)
        self.root = os.path.realpath(root) if self.local else root.rstrip("/")
        # folders already checked to resolve inside the destination, and known to exist:
        # a bucket of many objects in few folders pays realpath and makedirs once per folder
        self._checked: set[str] = set()
        self._made: set[str] = set()
        self._dirty: set[str] = set()  # folders that gained a name since the last flush
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._cleaned = False

    def describe(self, path: str) -> str:
        if self.local:
            return path
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{protocol}://{path}"

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
            with destination_errors(self.describe(path)):
                self.fs.pipe_file(path, data)
        return path

    def write_stream(self, key: str, src: IO[bytes], suffix: str = "") -> str:
        """Copy ``src`` (the source object: its errors stay the source's) to the destination."""
        path = self.target(key, suffix)
        if self.local:
            self._write_local(path, lambda out: shutil.copyfileobj(src, out, CHUNK))
            return path
        where = self.describe(path)
        with destination_errors(where):
            out = self.fs.open(path, "wb", block_size=max(CHUNK, 5 * 1024 * 1024))
        try:
            while chunk := src.read(CHUNK):
                with destination_errors(where):
                    out.write(chunk)
        except BaseException:
            with contextlib.suppress(Exception):
                out.discard()  # a multipart upload left incomplete is aborted, not completed
            raise
        with destination_errors(where):
            out.close()
        return path

    # ------------------------------------------------------------------ local files

    def _write_local(self, path: str, write: Callable[[IO[bytes]], object]) -> None:
        if not self._cleaned:
            self._cleaned = True
            temp = os.path.join(self.root, TEMP_FOLDER)
            if os.path.isdir(temp):  # a crash of an earlier run left temporaries: remove them
                clean_temporaries(temp)
                with contextlib.suppress(OSError):
                    os.rmdir(temp)
        folder = os.path.dirname(path)
        for attempt in (1, 2):
            try:
                self._make_folder(folder)
                self._write_file(path, folder, write)
                return
            except OSError as exc:
                if exc.errno == errno.ENOENT and attempt == 1 and os.path.isdir(self.root):
                    self._made.discard(folder)  # a sub-folder removed meanwhile: make it again
                    continue
                raise self._local_error(exc, path) from None

    def _local_error(self, exc: OSError, path: str) -> FlexingestError:
        if exc.errno == errno.ENOENT:
            return DestinationUnavailable(f"destination {self.root}: the output folder no longer exists "
                                          "(deleted, or its disk unmounted?); the next pass creates it again")
        if exc.errno in _UNAVAILABLE:
            return DestinationUnavailable(f"destination {path}: {exc.strerror} (check the output folder's "
                                          "permissions and mount)")
        return DestinationError(f"cannot write {path}: {exc.strerror}")

    def _make_folder(self, folder: str) -> None:
        if folder in self._made:
            return
        missing: list[str] = []
        probe = folder
        while not os.path.isdir(probe) and probe not in ("", "/"):
            missing.append(probe)
            probe = os.path.dirname(probe)
        try:
            os.makedirs(folder, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StepError(f"cannot create folder {folder}: a file of that name is in the way") from None
        with self._lock:
            self._dirty.update(os.path.dirname(m) for m in missing)
            self._made.add(folder)

    def _write_file(self, path: str, folder: str, write: Callable[[IO[bytes]], object]) -> None:
        tmp: str | None = None
        try:
            # An unnamed file (O_TMPFILE) vanishes by itself if the process dies while writing
            fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o644)
            unnamed = True
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            tmp = self._temp_name()  # a filesystem without unnamed files
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            unnamed = False
        try:
            with os.fdopen(fd, "wb", closefd=not unnamed) as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            if unnamed:
                try:  # a new output: give the complete file its name in one step
                    _link_unnamed(fd, path)
                    self._note_dirty(folder)
                    return
                except FileExistsError:  # an older copy: replace it atomically through a named temporary
                    tmp = self._temp_name()
                    _link_unnamed(fd, tmp)
            assert tmp is not None
            try:
                os.replace(tmp, path)
            except IsADirectoryError:
                raise StepError(f"cannot write {path}: a folder of that name is in the way") from None
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                local_tmp = os.path.join(folder, f".{os.path.basename(path)[:100]}.{os.getpid()}.part")
                shutil.move(tmp, local_tmp)  # a mount inside the destination: rename within its folder
                tmp = local_tmp
                os.replace(tmp, path)
            tmp = None
            self._note_dirty(folder)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if unnamed:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _temp_name(self) -> str:
        """A fresh name in the destination's temporary folder (same filesystem: renames are atomic)."""
        temp = os.path.join(self.root, TEMP_FOLDER)
        os.makedirs(temp, exist_ok=True)
        return os.path.join(temp, f"{os.getpid()}.{threading.get_ident()}.{next(self._counter)}")

    def _note_dirty(self, folder: str) -> None:
        with self._lock:
            self._dirty.add(folder)

    def flush(self) -> None:
        """fsync the folders that gained or changed a name: the outputs' names are durable."""
        with self._lock:
            folders, self._dirty = self._dirty, set()
        for folder in folders:
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        if self.local:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(self.root, TEMP_FOLDER))  # only if empty


def clean_temporaries(folder: str) -> int:
    """Remove temporaries that processes no longer alive left in ``folder`` (kill -9)."""
    removed = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
        for entry in entries:
            pid = entry.name.split(".", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _link_unnamed(fd: int, dest: str) -> None:
    """Give an O_TMPFILE file a name (linkat with AT_SYMLINK_FOLLOW through /proc)."""
    folder, name = os.path.split(dest)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # a dir_fd makes Python call linkat(), which follows the /proc link to the file
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
    finally:
        os.close(dir_fd)


def describe_url(url: str) -> str:
    """A URL as it may be shown: no user:password, no query (which may hold a token)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.scheme:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"

