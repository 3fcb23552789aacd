"""Processing steps and the registry that finds them.

A step is a subclass of :class:`Step` with an ``Options`` model (what the YAML may say
under its name) and one method, :meth:`Step.process`, that receives an object's record
and a handle to its bytes and returns the record for the next step.

Built-in steps are listed in :data:`BUILTIN_STEPS`; third-party steps register under the
entry-point group ``flexingest.steps``::

    [project.entry-points."flexingest.steps"]
    redact = "mypkg.steps:Redact"

Step modules are imported on first use and checked against :class:`Step`.
"""

from __future__ import annotations

import functools
import importlib
import threading
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict

from .. import metrics
from ..exceptions import FlexingestError, PluginError, StepError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from ..objects import Source

ENTRY_POINT_GROUP = "flexingest.steps"

BUILTIN_STEPS: dict[str, str] = {
    "command": "flexingest.steps.command:Command",
    "copy": "flexingest.steps.copy:Copy",
    "extract_text": "flexingest.steps.extract_text:ExtractText",
    "python": "flexingest.steps.python:Python",
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


class Step:
    """Base class of every step.

    ``process`` is called from several threads at once (up to the sync's
    ``concurrency``); a step that keeps shared state guards it with a lock.
    """

    Options: ClassVar[type[StepOptions]] = StepOptions
    #: the name it is registered under (set when built from a pipeline file), for metrics
    step_name: str = ""

    def __init__(self, options: StepOptions, context: StepContext) -> None:
        self.options = options
        self.context = context

    def process(self, record: Record, source: Source) -> Record:
        """Process one object; return the record for the next step, or raise."""
        raise NotImplementedError

    def flush(self) -> None:
        """Make everything written so far durable. Called before objects are recorded done."""

    def close(self) -> None:
        """Release what the step holds. Called once, after its last ``process``."""


def run_steps(steps: list[Step], record: Record, source: Source) -> list[Record]:
    """Run one object through ``steps`` in order; returns the final record(s)."""
    for step in steps:
        with metrics.timed_step(step.step_name or type(step).__name__, record.get("sync")):
            result = step.process(record, source)
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
