"""Processing steps and the registry that finds them.

A step is a subclass of :class:`Step` with an ``Options`` model (what the YAML may say
under its name) and one method, :meth:`Step.process`, that receives an object's record
and a handle to its bytes and returns the record for the next step.

Built-in steps are listed in :data:`BUILTIN_STEPS`; third-party steps register under the
entry-point group ``flexingest.steps``::

    [project.entry-points."flexingest.steps"]
    redact = "mypkg.steps:Redact"

Step modules are imported on first use and checked against :class:`Step`.

A step may also turn one object into several records (``unpack``: one per archive
member) by returning a :class:`Fanout` of ``(record, source)`` pairs; :func:`run_steps`
sends each pair through the steps after it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import threading
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Iterator, Protocol, Sequence

from pydantic import BaseModel, ConfigDict

from .. import metrics
from ..exceptions import FlexingestError, ObjectSkipped, PluginError, StepError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from ..objects import Source

ENTRY_POINT_GROUP = "flexingest.steps"

BUILTIN_STEPS: dict[str, str] = {
    "chunk": "flexingest.steps.chunk:Chunk",
    "command": "flexingest.steps.command:Command",
    "copy": "flexingest.steps.copy:Copy",
    "extract_text": "flexingest.steps.extract_text:ExtractText",
    "python": "flexingest.steps.python:Python",
    "unpack": "flexingest.steps.unpack:Unpack",
    "webhook": "flexingest.steps.webhook:Webhook",
    "write_json": "flexingest.steps.write_json:WriteJson",
    "write_jsonl": "flexingest.steps.write_jsonl:WriteJsonl",
}

#: What a step receives and returns: connector, sync, key, version, size, modified,
#: text, metadata, plus whatever earlier steps added.
Record = dict[str, Any]


class StepOptions(BaseModel):
    """Base of every step's options model: unknown options are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class StepContext:
    """What a step may know of its surroundings when it is built."""

    #: The pipeline file's folder: relative output paths resolve against it.
    base_dir: Path
    #: Opens a destination: ``(url, connector name or None) -> (filesystem, path)``.
    open_destination: Callable[[str, str | None], tuple[AbstractFileSystem, str]] = field(
        default=lambda url, connector: _default_destination(url)
    )
    #: ``(path, its size now) -> its length as of the last commit of the state`` (``write_jsonl``:
    #: what a crash wrote after it is cut when the file is opened again); a file the state does
    #: not know yet is recorded with its size now.
    committed_length: Callable[[str, int], int] = field(default=lambda path, size: size)

#: What a commit records of each object: ``(key, version, status)``.
Settled = tuple[str, str, str]


class Step:
    """Base class of every step.

    ``process`` is called from several threads at once (up to the sync's
    ``concurrency``); a step that keeps shared state guards it with a lock.
    """

    Options: ClassVar[type[StepOptions]] = StepOptions
    #: where the step may run with a process or Dask executor: "worker" (per object, anywhere), or
    #: "coordinator" (it appends to one shared output); it and the steps after it run on the coordinator
    runs_on: ClassVar[str] = "worker"
    #: the name it is registered under (set when built from a pipeline file), for metrics
    step_name: str = ""

    def __init__(self, options: StepOptions, context: StepContext) -> None:
        self.options = options
        self.context = context

    def process(self, record: Record, source: Source) -> Record | Fanout:
        """Process one object; return the record for the next step (or a Fanout), or raise."""
        raise NotImplementedError

    def flush(self) -> None:
        """Make everything written so far durable. Called before objects are recorded done."""

    @contextlib.contextmanager
    def committing(self, settled: Sequence[Settled]) -> Iterator[dict[str, int]]:
        """Around the commit of a batch of outcomes: make outputs durable, and yield the
        lengths of output files to record with the batch, in the same transaction. The
        default calls :meth:`flush` and records nothing."""
        self.flush()
        yield {}

    def close(self) -> None:
        """Release what the step holds. Called once, after its last ``process``."""


class ObjectSource(Protocol):
    """What a step sees of an object's bytes: :class:`flexingest.connectors.Source`, or an
    archive member's stand-in (:class:`flexingest.steps.unpack.MemberSource`)."""

    @property
    def key(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def connector(self) -> str: ...
    def open(self) -> Any: ...
    def read(self) -> bytes: ...
    def stream(self) -> Any: ...
    def local_path(self) -> Any: ...


class Fanout:
    """Several ``(record, source)`` pairs in place of one record.

    Returned by a step's ``process``; each pair goes through the steps after that step, in
    turn. The pairs may be produced lazily (a generator that keeps an archive open while
    they are processed); it is closed when processing ends, early or not.
    """

    def __init__(self, items: Iterable[tuple[Record, ObjectSource]]) -> None:
        self.items = items

    def __iter__(self) -> Iterator[tuple[Record, ObjectSource]]:
        return iter(self.items)

    def close(self) -> None:
        close = getattr(self.items, "close", None)
        if close is not None:
            close()


def run_steps(steps: Sequence[Step], record: Record, source: Source | ObjectSource) -> list[Record]:
    """Run ``steps`` in order on one object; the records that came out of the last step.

    One record, unless a step returned a :class:`Fanout`: then each of its pairs runs
    through the remaining steps, and all their records are returned. A pair that fails
    fails the whole object (the object is the unit of state), the error naming the
    pair's key; a pair skipped (``ObjectSkipped``) only drops that pair.
    """
    return _run(steps, 0, record, source)


def _run(steps: Sequence[Step], start: int, record: Record, source: Any) -> list[Record]:
    for index in range(start, len(steps)):
        step = steps[index]
        with metrics.timed_step(step.step_name or type(step).__name__, record.get("sync")):
            result = step.process(record, source)
        if isinstance(result, Fanout):
            out: list[Record] = []
            try:
                for member_record, member_source in result:
                    try:
                        out.extend(_run(steps, index + 1, member_record, member_source))
                    except ObjectSkipped:
                        continue
                    except FlexingestError as exc:
                        exc.args = (f"{member_source.key}: {exc}",)
                        raise
                    except Exception as exc:  # noqa: BLE001 - a bug or OS error, named with the member
                        raise StepError(f"{member_source.key}: {type(exc).__name__}: {exc}") from exc
            finally:
                result.close()
            return out
        if not isinstance(result, dict):
            raise StepError(f"step {type(step).__name__} returned {type(result).__name__}, not a record")
        record = result
    return [record]


@dataclass(frozen=True)
class StepCall:
    """One entry of a ``steps:`` list: a step name and its validated options."""

    name: str
    options: StepOptions

    def build(self, context: StepContext) -> Step:
        step = step_class(self.name)(self.options, context)
        step.step_name = self.name
        return step


_lock = threading.Lock()
_classes: dict[str, type[Step]] = {}


@functools.cache
def _entry_points() -> dict[str, tuple[str, str]]:
    """name -> (``module:Class``, the package that registers it). Read once a process: scanning
    every installed distribution's metadata costs milliseconds."""
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        package = f"{dist.name} {dist.version}" if dist is not None else "an unknown package"
        found[ep.name] = (ep.value, package)
    return found


def known_steps() -> dict[str, str]:
    """Every step name (built-in and registered) -> its ``module:Class`` path, sorted."""
    found = {name: target for name, (target, _) in _entry_points().items()}
    found.update(BUILTIN_STEPS)  # a plugin may not shadow a built-in
    return dict(sorted(found.items()))


def step_class(name: str) -> type[Step]:
    """Import the step registered as ``name`` and check it is a :class:`Step`.

    A plugin that fails to import is a :class:`PluginError` naming its package.
    """
    with _lock:
        if name in _classes:
            return _classes[name]
        target = known_steps().get(name)
        if target is None:
            raise FlexingestError(f"unknown step {name!r} (known: {', '.join(known_steps())})")
        package = "flexingest" if name in BUILTIN_STEPS else _entry_points()[name][1]
        module_name, _, attr = target.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:  # noqa: BLE001 - a plugin may fail at import in any way
            raise PluginError(f"step {name!r} of package {package} could not be loaded from {target!r}: "
                              f"{type(exc).__name__}: {exc}") from exc
        if not (isinstance(obj, type) and issubclass(obj, Step)):
            raise PluginError(f"step {name!r} of package {package} ({target}) is not a subclass of "
                              "flexingest.steps.Step")
        _classes[name] = obj
        return obj


def _default_destination(url: str) -> tuple[AbstractFileSystem, str]:
    from ..destinations import open_url

    return open_url(url)
