"""``copy``: stream the raw object to ``<url>/<key>`` (any fsspec URL, another bucket too)."""

from __future__ import annotations

from ..objects import Source
from . import Record
from ._output import DestinationStep

SMALL = 8 * 1024 * 1024  # read in one request below this; stream in chunks above


class Copy(DestinationStep):
    """Streams the object to the destination; small objects in one read."""

    def process(self, record: Record, source: Source) -> Record:
        self.destination.target(source.key)  # refuse an unsafe key before reading anything
        if source.size < SMALL:
            path = self.destination.write_bytes(source.key, source.read())
        else:
            with source.stream() as src:
                path = self.destination.write_stream(source.key, src)
        record.setdefault("outputs", []).append(path)
        return record
