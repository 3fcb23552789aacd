"""``write_jsonl``: each object's record as one JSON line of a local file, exactly once.

A line is not written when the step sees the record: it is kept until the object's outcome
is committed. Then the lines of the objects done in that batch are appended in one write,
fsync'ed, and the file's new length is recorded in the state **in the same transaction**
as the outcomes. When the file is opened again, whatever follows the last recorded length
(lines written by a process that died before its commit) is cut: those objects are
processed again, and every object ends with its line exactly once, whatever the crashes.
An object that fails after this step (a later step) leaves no line.

Readers see whole lines only once a batch is committed; a line being appended may be seen
half written (read up to the last newline), and lines written in the instant between the
append and the commit of a process that dies then are cut when flexingest starts again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import IO, Iterator, Sequence

from pydantic import Field

from ..exceptions import StepError
from ..objects import Source, current_object
from . import Record, Settled, Step, StepContext, StepOptions

log = logging.getLogger(__name__)


class WriteJsonlOptions(StepOptions):
    path: str = Field(min_length=1, description="a local file; relative paths resolve against the pipeline file")


def dumps(record: Record) -> str:
    return json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":"))


class _File:
    """One output file of this process, shared by the steps (of every sync) that append to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()  # held from an append until its length is committed
        self.handle: IO[bytes] | None = None
        self.users = 0

    def open(self) -> IO[bytes]:
        if self.handle is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.handle = open(self.path, "ab")
            except OSError as exc:
                raise StepError(f"cannot open {self.path}: {exc.strerror}") from None
        return self.handle


_files: dict[str, _File] = {}
_files_lock = threading.Lock()


def _shared(path: Path, committed: int) -> _File:
    key = os.path.realpath(path)
    with _files_lock:
        if key not in _files:
            _cut_uncommitted(path, committed)
            _files[key] = _File(path)
        shared = _files[key]
        shared.users += 1
        return shared


def _cut_uncommitted(path: Path, committed: int) -> None:
    """A process that died between an append and its commit left lines the state never
    recorded: cut them (their objects are processed again)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size > committed:
        try:
            with open(path, "r+b") as f:
                f.truncate(committed)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise StepError(f"cannot cut {path} back to its committed length {committed}: {exc.strerror}") from None
        log.info("%s: cut %d bytes written after the last commit (their objects are processed again)", path,
                 size - committed)


class WriteJsonl(Step):
    """Appends one line per record, exactly once per object (see the module docstring)."""

    Options = WriteJsonlOptions
    options: WriteJsonlOptions
    runs_on = "coordinator"  # one file, appended to by one process

    def __init__(self, options: WriteJsonlOptions, context: StepContext) -> None:
        super().__init__(options, context)
        path = Path(options.path).expanduser()
        self.path = path if path.is_absolute() else context.base_dir / path
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        self._file = _shared(self.path, context.committed_length(str(self.path), size))
        self._lock = threading.Lock()
        #: key -> (version, attempt, lines): held until the object's outcome is committed
        self._pending: dict[str, tuple[str, int, list[bytes]]] = {}
        self._closed = False

    def process(self, record: Record, source: Source) -> Record:
        line = (dumps(record) + "\n").encode("utf-8")
        current = current_object() or (source.key, source.version, -1)
        key, version, attempt = current
        with self._lock:
            if self._closed:  # a worker still busy when the pass ended: its line is not written
                raise StepError(f"{self.path}: the pass has ended; this object is processed next time")
            held = self._pending.get(key)
            if held is None or held[1] != attempt:  # a new attempt at the object starts over
                held = (version, attempt, [])
                self._pending[key] = held
            held[2].append(line)
        return record

    @contextlib.contextmanager
    def committing(self, settled: Sequence[Settled]) -> Iterator[dict[str, int]]:
        """Append the lines of the objects done in this batch, fsync, and hold the file until the
        batch (and the file's new length) is committed."""
        with self._lock:
            lines: list[bytes] = []
            for key, version, status in settled:
                held = self._pending.pop(key, None)
                if held is not None and status == "done" and held[0] == version:
                    lines.extend(held[2])
        with self._file.lock:
            if not lines and self._file.handle is None:
                yield {}
                return
            f = self._file.open()
            end = f.seek(0, os.SEEK_END)
            try:
                f.write(b"".join(lines))
                f.flush()
                os.fsync(f.fileno())
            except OSError as exc:
                try:  # never leave half a line behind
                    f.truncate(end)
                except OSError:
                    pass
                raise StepError(f"cannot write {self.path}: {exc.strerror}") from None
            try:
                yield {str(self.path): f.tell()}
            except BaseException:  # the batch was not committed: its lines are not recorded either
                with contextlib.suppress(OSError):
                    f.truncate(end)
                raise

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._pending.clear()
        key = os.path.realpath(self.path)
        with _files_lock:
            self._file.users -= 1
            if self._file.users <= 0 and _files.get(key) is self._file:
                del _files[key]
                with self._file.lock:
                    if self._file.handle is not None:
                        self._file.handle.close()
                        self._file.handle = None
