"""``write_json``: write each object's record to ``<url>/<key>.json``, overwriting."""

from __future__ import annotations

from ..objects import Source
from . import Record
from ._output import DestinationStep
from .write_jsonl import dumps


class WriteJson(DestinationStep):
    """Writes the record as ``<key>.json``, replacing an older one."""

    def process(self, record: Record, source: Source) -> Record:
        self.destination.write_bytes(source.key, dumps(record).encode("utf-8"), suffix=".json")
        return record
