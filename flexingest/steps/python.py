"""``python``: call user code with the record; what it returns is the new record."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

from pydantic import Field

from ..exceptions import FlexingestError, ObjectSkipped, StepError
from ..objects import Source
from . import Record, Step, StepContext, StepOptions


class PythonOptions(StepOptions):
    callable: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
                          description="'package.module:function', importable from the pipeline file's folder")


class Python(Step):
    """Imports ``module:function`` once (the pipeline file's folder is on ``sys.path``).

    The function receives the record (a dict) and returns the new record; returning
    None keeps the record as it was. An exception fails the object with its message.
    """

    Options = PythonOptions
    options: PythonOptions

    def __init__(self, options: PythonOptions, context: StepContext) -> None:
        super().__init__(options, context)
        module_name, _, attr = options.callable.partition(":")
        folder = str(context.base_dir)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise FlexingestError(f"python step: cannot load {options.callable!r}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - user module failing at import
            raise FlexingestError(f"python step: importing {module_name!r} failed: "
                                  f"{type(exc).__name__}: {exc}") from None
        if not callable(target):
            raise FlexingestError(f"python step: {options.callable!r} is not callable")
        self.function: Callable[[Record], Any] = target

    def process(self, record: Record, source: Source) -> Record:
        try:
            result = self.function(record)
        except (ObjectSkipped, StepError):
            raise
        except Exception as exc:  # noqa: BLE001 - user code
            raise StepError(f"{self.options.callable} raised {type(exc).__name__}: {exc}") from exc
        if result is None:
            return record
        if not isinstance(result, dict):
            raise StepError(f"{self.options.callable} returned {type(result).__name__}, expected a dict or None")
        return result
