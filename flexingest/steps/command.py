"""``command``: run a program on a local copy of the object; its stdout becomes the text."""

from __future__ import annotations

import re
import subprocess
import threading
from datetime import timedelta

from pydantic import Field

from .. import children
from ..exceptions import StepError
from ..objects import Source
from ..units import Duration
from . import Record, Step, StepContext, StepOptions

STDERR_TAIL = 2000
PLACEHOLDER = re.compile(r"\{(?:path|key|version|connector)\}")


class CommandOptions(StepOptions):
    argv: list[str] = Field(min_length=1, description="the program and its arguments; {path}, {key}, "
                                                      "{version} and {connector} are substituted")
    timeout: Duration = Field(timedelta(minutes=5), description="the program is killed after this")


def tail(data: bytes, limit: int = STDERR_TAIL) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


class Command(Step):
    """Runs ``argv`` without a shell, in its own process group (killed whole on timeout).

    Closing the step ends the groups still running (a pass that ran out of grace time).
    """

    Options = CommandOptions
    options: CommandOptions

    def __init__(self, options: CommandOptions, context: StepContext) -> None:
        super().__init__(options, context)
        self._running: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._closed = False

    def process(self, record: Record, source: Source) -> Record:
        seconds = self.options.timeout.total_seconds()
        with source.local_path() as path:
            values = {"{path}": path, "{key}": source.key, "{version}": source.version,
                      "{connector}": source.connector}
            argv = [self._substitute(arg, values) for arg in self.options.argv]
            with self._lock:
                if self._closed:
                    raise StepError("the pass has ended: the command was not started")
                try:
                    proc = children.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, cwd=self.context.base_dir)
                except OSError as exc:
                    raise StepError(f"cannot run {argv[0]!r}: {exc.strerror}") from None
                self._running.add(proc)
            try:
                out, err = proc.communicate(timeout=seconds)
            except subprocess.TimeoutExpired:
                children.end([proc], wait=0)
                _, err = proc.communicate()
                raise StepError(f"command {argv[0]!r} timed out after {seconds:g}s"
                                + (f": {tail(err)}" if err.strip() else "")) from None
            except BaseException:
                children.end([proc], wait=0)
                raise
            finally:
                with self._lock:
                    self._running.discard(proc)
                children.forget(proc)
        if proc.returncode != 0:
            how = (f"was killed by signal {-proc.returncode}" if proc.returncode < 0
                   else f"exited with status {proc.returncode}")
            raise StepError(f"command {argv[0]!r} {how}" + (f": {tail(err)}" if err.strip() else ""))
        record["text"] = out.decode("utf-8", "replace")
        return record

    @staticmethod
    def _substitute(arg: str, values: dict[str, str]) -> str:
        # one pass: a key (or its path) containing "{version}" is not substituted again
        return PLACEHOLDER.sub(lambda m: values[m.group(0)], arg)

    def close(self) -> None:
        """End the programs still running (TERM, then KILL): none outlives the pass."""
        with self._lock:
            self._closed = True
            running = list(self._running)
        children.end(running)
