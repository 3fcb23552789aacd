"""Plain text, CSV and JSON: decoded while streaming, cut at ``max_chars``.

The encoding comes from a BOM (UTF-8, UTF-16, UTF-32), else from the NUL pattern of
UTF-16/32 without one, else UTF-8; bytes that are not UTF-8 fall back to Windows-1252
only where they are plainly 8-bit text (no control bytes). Anything else is refused:
a record never carries NULs or binary junk.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from typing import IO, Any

from ..exceptions import UnprocessableObject
from . import Extracted, Settings
from .detect import HEAD, sniff_encoding, windows_1252

BLOCK = 1 << 20


def decode(stream: IO[bytes], settings: Settings) -> Extracted:
    """The whole text of ``stream`` (up to ``max_chars``) and ``encoding`` / ``truncated``."""
    stream.seek(0)
    head = stream.read(HEAD)
    encoding = sniff_encoding(head) or "utf-8"
    try:
        return _decode(stream, head, encoding, settings)
    except UnicodeDecodeError as exc:
        if encoding != "utf-8":
            raise UnprocessableObject(f"not decodable as {encoding.replace('-sig', '').upper()} text "
                                      f"(byte {exc.start} of a block: {exc.reason}); "
                                      "the object's bytes will not change on retry") from None
    # not UTF-8: Windows-1252 if it is plainly 8-bit text, for the whole object
    stream.seek(0)
    head = stream.read(HEAD)
    return _decode(stream, head, "cp1252", settings)


def _decode(stream: IO[bytes], data: bytes, encoding: str, settings: Settings) -> Extracted:
    limit = settings.max_chars
    decoder = codecs.getincrementaldecoder(encoding)()
    chunks: list[str] = []
    count = 0
    truncated = False
    while True:
        if encoding == "cp1252" and not windows_1252(data):
            raise UnprocessableObject("not text: neither UTF-8/16/32 nor 8-bit text (it has control bytes); "
                                      "the object's bytes will not change on retry")
        piece = decoder.decode(data, final=not data)
        if "\x00" in piece:
            raise UnprocessableObject(f"not text: NUL characters in what decodes as {_name(encoding)}; "
                                      "the object's bytes will not change on retry")
        chunks.append(piece)
        count += len(piece)
        if count > limit:
            truncated = True
            break
        if not data:
            break
        data = stream.read(BLOCK)
    text = "".join(chunks)
    if text.startswith("\ufeff"):
        text = text[1:]
    metadata: dict[str, Any] = {"encoding": _name(encoding)}
    if truncated:
        metadata["truncated"] = True
    return Extracted(text, metadata)


def _name(encoding: str) -> str:
    return {"cp1252": "windows-1252", "utf-8-sig": "utf-8"}.get(encoding, encoding)


def read_text(stream: IO[bytes], settings: Settings) -> Extracted:
    return decode(stream, settings)


def read_csv(stream: IO[bytes], settings: Settings) -> Extracted:
    result = decode(stream, settings)
    text, metadata = result.text, result.metadata
    sample = text[:65536]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = csv.reader(io.StringIO(sample), dialect)
    metadata["columns"] = next(rows, [])
    if not metadata.get("truncated"):
        try:
            metadata["rows"] = max(0, sum(1 for _ in csv.reader(io.StringIO(text), dialect)) - 1)
        except csv.Error as exc:
            raise UnprocessableObject(f"invalid CSV: {exc}") from None
    return result


def read_json(stream: IO[bytes], settings: Settings) -> Extracted:
    result = decode(stream, settings)
    if not result.metadata.get("truncated"):
        try:
            value = json.loads(result.text)
        except ValueError as exc:
            raise UnprocessableObject(f"invalid JSON: {exc}; the object's bytes will not change on retry") from None
        result.metadata["json_type"] = "object" if isinstance(value, dict) else type(value).__name__
        if isinstance(value, dict):
            result.metadata["keys"] = list(value)[:100]
    return result
