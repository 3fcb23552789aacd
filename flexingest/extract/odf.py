"""OpenDocument: ODT, ODS and ODP, from ``content.xml``, ``styles.xml`` and ``meta.xml``.

ODT: paragraphs, headings, lists and tables, then the master pages' headers and footers.
ODS: each sheet a page, rows by lines and cells by tabs (the cells' shown values, never
formulas). ODP: each slide a page, its notes after its text.
"""

from __future__ import annotations

import zipfile
from typing import IO, Any
from xml.etree import ElementTree

from . import Extracted, Settings, clean_value, join_pages
from .package import exists, open_package, parse

TEXT = "{urn:oasis:names:tc:opendocument:xmlns:text:1.0}"
TABLE = "{urn:oasis:names:tc:opendocument:xmlns:table:1.0}"
DRAW = "{urn:oasis:names:tc:opendocument:xmlns:drawing:1.0}"
OFFICE = "{urn:oasis:names:tc:opendocument:xmlns:office:1.0}"
STYLE = "{urn:oasis:names:tc:opendocument:xmlns:style:1.0}"
PRESENTATION = "{urn:oasis:names:tc:opendocument:xmlns:presentation:1.0}"
META = "{urn:oasis:names:tc:opendocument:xmlns:meta:1.0}"
DC = "{http://purl.org/dc/elements/1.1/}"
MAX_REPEAT = 1000  # a repeated cell or row is written out at most this often (empty ones: never)
_META = {f"{DC}title": "title", f"{DC}creator": "author", f"{META}initial-creator": "initial_author",
         f"{DC}subject": "subject", f"{DC}description": "description", f"{META}keyword": "keywords",
         f"{META}creation-date": "created", f"{DC}date": "modified", f"{DC}language": "language"}
_KINDS = {"odt": "ODT", "ods": "ODS", "odp": "ODP"}


def read_odf(stream: IO[bytes], settings: Settings) -> Extracted:
    from .detect import _zip_kind

    kind = _zip_kind(stream)
    with open_package(stream, settings, _KINDS.get(kind, "ODF")) as zf:
        metadata = _meta(zf)
        body = parse(zf, "content.xml").find(f"{OFFICE}body")
        content = body[0] if body is not None and len(body) else ElementTree.Element("empty")
        if kind == "ods":
            names = [t.get(f"{TABLE}name", "") for t in content.iter(f"{TABLE}table")]
            pages = [_sheet(t) for t in content.iter(f"{TABLE}table")]
            text, offsets = join_pages(pages)
            metadata.update({"sheets": names, "page_offsets": offsets})
        elif kind == "odp":
            pages = []
            for slide in content.iter(f"{DRAW}page"):
                notes = slide.find(f"{PRESENTATION}notes")
                main = [_blocks(child) for child in slide if child is not notes]
                parts = ["\n".join(p for p in main if p)]
                if notes is not None:
                    parts.append(_blocks(notes))
                pages.append("\n\n".join(p for p in parts if p))
            text, offsets = join_pages(pages)
            metadata.update({"slides": len(pages), "page_offsets": offsets})
        else:
            text = _blocks(content)
            margins = _headers_footers(zf)
            if margins:
                text = f"{text}\n\n{margins}"
    return Extracted(text, metadata)


def _meta(zf: zipfile.ZipFile) -> dict[str, Any]:
    if not exists(zf, "meta.xml"):
        return {}
    metadata: dict[str, Any] = {}
    for element in parse(zf, "meta.xml").iter():
        field = _META.get(element.tag)
        if field and element.text and element.text.strip() and field not in metadata:
            metadata[field] = clean_value(element.text)
    return metadata


def _headers_footers(zf: zipfile.ZipFile) -> str:
    if not exists(zf, "styles.xml"):
        return ""
    found = []
    for page in parse(zf, "styles.xml").iter(f"{STYLE}master-page"):
        for child in page:
            if child.tag in (f"{STYLE}header", f"{STYLE}footer", f"{STYLE}header-left", f"{STYLE}footer-left"):
                text = _blocks(child)
                if text and text not in found:
                    found.append(text)
    return "\n".join(found)


def _blocks(element: ElementTree.Element) -> str:
    """Paragraphs and headings a line each, tables a row a line, in document order."""
    lines: list[str] = []
    _walk(element, lines)
    return "\n".join(line for line in lines if line.strip())


def _walk(element: ElementTree.Element, lines: list[str]) -> None:
    for child in element:
        if child.tag in (f"{TEXT}p", f"{TEXT}h"):
            lines.append(_inline(child))
        elif child.tag == f"{TABLE}table":
            lines.append(_sheet(child, named=False))
        elif child.tag in (f"{TEXT}tracked-changes", f"{OFFICE}annotation", f"{PRESENTATION}notes"):
            continue
        else:
            _walk(child, lines)


def _inline(element: ElementTree.Element) -> str:
    """The text of one paragraph: spans, links, spaces (``text:s``), tabs and line breaks."""
    pieces = [element.text or ""]
    for child in element:
        tag = child.tag
        if tag == f"{TEXT}s":
            pieces.append(" " * min(int(child.get(f"{TEXT}c", "1") or 1), 100))
        elif tag == f"{TEXT}tab":
            pieces.append("\t")
        elif tag == f"{TEXT}line-break":
            pieces.append("\n")
        elif tag in (f"{TEXT}note", f"{OFFICE}annotation"):
            body = child.find(f"{TEXT}note-body")
            if body is not None:
                pieces.append(f" ({_blocks(body)})")
        else:
            pieces.append(_inline(child))
        pieces.append(child.tail or "")
    return "".join(pieces)


def _sheet(table: ElementTree.Element, named: bool = True) -> str:
    """A table: its name (for sheets), then one line per row, cells by tabs."""
    lines = [table.get(f"{TABLE}name", "")] if named and table.get(f"{TABLE}name") else []
    for row in table.iter(f"{TABLE}table-row"):
        cells: list[str] = []
        for cell in row:
            if cell.tag not in (f"{TABLE}table-cell", f"{TABLE}covered-table-cell"):
                continue
            value = "\n".join(_inline(p) for p in cell.iter(f"{TEXT}p"))
            repeat = int(cell.get(f"{TABLE}number-columns-repeated", "1") or 1)
            cells.extend([value] * (min(repeat, MAX_REPEAT) if value else min(repeat, 1)))
        while cells and not cells[-1]:
            cells.pop()
        if cells:
            repeat = int(row.get(f"{TABLE}number-rows-repeated", "1") or 1)
            lines.extend(["\t".join(cells)] * min(repeat, MAX_REPEAT))
    return "\n".join(lines)
