"""The lock of a state file: one process runs passes on a state file at a time."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from .exceptions import StateError, StateLocked


class StateLock:
    """An exclusive lock on a state file, held through ``<state>.lock`` (flock).

    The lock dies with its process, ``kill -9`` included, so a crash never leaves a
    stale lock behind. The file holds the holder's pid, for the message of the next.
    """

    def __init__(self, state_path: str | os.PathLike[str]) -> None:
        self.path = Path(f"{state_path}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(f"cannot create the lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = None
            with contextlib.suppress(ValueError, OSError):
                time.sleep(0.05)  # the holder may be writing its pid right now
                pid = int(os.pread(fd, 32, 0).decode().strip() or 0) or None
            os.close(fd)
            raise StateLocked(str(self.path), pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def is_held(self) -> bool:
        """Whether a live process holds the lock now (a probe that never creates or writes)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases the probe's own shared lock
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
