"""The base of steps that write one output per object to a destination (``copy``, ``write_json``).

Where and how outputs are written, and how a destination's errors are told apart from
the source's, is :mod:`flexingest.destinations`.
"""

from __future__ import annotations

from pydantic import Field

from ..destinations import Destination
from . import Step, StepContext, StepOptions


class DestinationOptions(StepOptions):
    url: str = Field(min_length=1, description="an fsspec URL or a local folder (relative to the pipeline file)")
    connector: str | None = Field(
        None, description="a declared connector whose credentials open `url`; `url` is then a path in its bucket")


class DestinationStep(Step):
    """A step that writes one output per object to ``url`` (``copy``, ``write_json``)."""

    Options = DestinationOptions
    options: DestinationOptions

    def __init__(self, options: DestinationOptions, context: StepContext) -> None:
        super().__init__(options, context)
        fs, root = context.open_destination(options.url, options.connector)
        self.destination = Destination(fs, root, options.url)

    def flush(self) -> None:
        self.destination.flush()

    def close(self) -> None:
        self.destination.close()
