"""RTF: the text through striprtf (control words, font tables and pictures dropped), and
the ``\\info`` group's title, author, subject and keywords as metadata."""

from __future__ import annotations

import re
from typing import IO, Any

from ..exceptions import StepError, UnprocessableObject
from . import DOCUMENTS_EXTRA, Extracted, Settings, clean_value

_INFO = re.compile(r"\{\\(title|author|subject|keywords|operator)\s+((?:[^{}\\]|\\[^{}])*)\}")
_FIELDS = {"title": "title", "author": "author", "subject": "subject", "keywords": "keywords",
           "operator": "last_modified_by"}


def read_rtf(stream: IO[bytes], settings: Settings) -> Extracted:
    try:
        from striprtf.striprtf import rtf_to_text
    except ImportError:
        raise StepError(f"RTF needs the striprtf package: {DOCUMENTS_EXTRA}") from None
    stream.seek(0)
    raw = stream.read(settings.max_bytes + 1)
    if len(raw) > settings.max_bytes:
        raise UnprocessableObject(f"RTF larger than max_bytes ({settings.max_bytes}): it is parsed whole")
    # RTF is 7-bit: 8-bit characters are \'hh escapes in the document's code page, which
    # striprtf decodes; stray 8-bit bytes are taken as Windows-1252
    source = raw.decode("cp1252", "replace")
    encoding = _codepage(source)
    try:
        text = rtf_to_text(source, encoding=encoding, errors="replace")  # type: ignore[no-untyped-call]
    except (ValueError, IndexError, LookupError) as exc:
        raise UnprocessableObject(f"cannot read RTF: {exc}; the object's bytes will not change on retry") from None
    metadata: dict[str, Any] = {}
    info = source.find("{\\info")
    if info >= 0:
        for name, value in _INFO.findall(source[info: info + 20000]):
            field = _FIELDS[name]
            decoded = rtf_to_text("{\\rtf1 " + value + "}", encoding=encoding,  # type: ignore[no-untyped-call]
                                  errors="replace").strip()
            if decoded and field not in metadata:
                metadata[field] = clean_value(decoded)
    return Extracted(text, metadata)


def _codepage(source: str) -> str:
    match = re.search(r"\\ansicpg(\d+)", source[:2000])
    if match:
        name = f"cp{match.group(1)}"
        try:
            "".encode(name)
            return name
        except LookupError:
            pass
    return "cp1252"
