"""``write_json``: write each object's record to ``<url>/<key>.json``, overwriting."""

from __future__ import annotations

from ..connectors import Source
from . import Record, Step, StepContext
from ._output import Destination, DestinationOptions
from .write_jsonl import dumps


class WriteJson(Step):
    Options = DestinationOptions
    options: DestinationOptions

    def __init__(self, options: DestinationOptions, context: StepContext) -> None:
        super().__init__(options, context)
        self.destination = Destination(options, context)

    def process(self, record: Record, source: Source) -> Record:
        self.destination.write_bytes(source.key, dumps(record).encode("utf-8"), suffix=".json")
        return record
