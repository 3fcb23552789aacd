"""``write_jsonl``: append each object's record as one JSON line to a local file."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import IO

from pydantic import Field

from ..exceptions import StepError
from ..objects import Source
from . import Record, Step, StepContext, StepOptions


class WriteJsonlOptions(StepOptions):
    path: str = Field(min_length=1, description="a local file; relative paths resolve against the pipeline file")


def dumps(record: Record) -> str:
    return json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":"))


class WriteJsonl(Step):
    """Appends one line per object.

    Lines are written whole or not at all: a failed write (disk full) is cut back so
    the file never holds half a line. At-least-once processing means a crash between
    this write and the state commit can repeat a line on the next pass; consumers
    that need one line per object keep the last line per (connector, key, version).
    """

    Options = WriteJsonlOptions
    options: WriteJsonlOptions
    runs_on = "coordinator"  # one file, appended to by one process

    def __init__(self, options: WriteJsonlOptions, context: StepContext) -> None:
        super().__init__(options, context)
        path = Path(options.path).expanduser()
        self.path = path if path.is_absolute() else context.base_dir / path
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._closed = False

    def process(self, record: Record, source: Source) -> Record:
        line = (dumps(record) + "\n").encode("utf-8")
        with self._lock:
            if self._closed:  # a worker still busy when the pass ended: its line is not written
                raise StepError(f"{self.path}: the pass has ended; this object is processed next time")
            if self._file is None:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._file = open(self.path, "ab")
                except OSError as exc:
                    raise StepError(f"cannot open {self.path}: {exc.strerror}") from None
            f = self._file
            end = f.seek(0, os.SEEK_END)
            try:
                f.write(line)
                f.flush()
            except OSError as exc:
                try:  # never leave half a line behind
                    f.truncate(end)
                except OSError:
                    pass
                self._file = None
                f.close()
                raise StepError(f"cannot write {self.path}: {exc.strerror}", transient=False) from None
        return record

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None
