"""``copy``: stream the raw object to ``<url>/<key>`` (any fsspec URL, another bucket too)."""

from __future__ import annotations

from ..connectors import Source
from . import Record, Step, StepContext
from ._output import Destination, DestinationOptions

SMALL = 8 * 1024 * 1024  # read in one request below this; stream in chunks above


class Copy(Step):
    Options = DestinationOptions
    options: DestinationOptions

    def __init__(self, options: DestinationOptions, context: StepContext) -> None:
        super().__init__(options, context)
        self.destination = Destination(options, context)

    def process(self, record: Record, source: Source) -> Record:
        self.destination.target(source.key)  # refuse an unsafe key before reading anything
        if source.size < SMALL:
            path = self.destination.write_bytes(source.key, source.read())
        else:
            with source.stream() as src:
                path = self.destination.write_stream(source.key, src)
        record.setdefault("outputs", []).append(path)
        return record
