"""Office Open XML: DOCX, XLSX/XLSM and PPTX, read from their XML parts.

DOCX: body paragraphs and tables (a row a line, cells by tabs), then footnotes, endnotes,
headers and footers; core properties as metadata. XLSX: each sheet's rows, cell values as
last calculated (never formulas), dates as ISO dates; sheet names as metadata, each sheet
a "page". PPTX: each slide's text and its notes, slides in presentation order, each a page.
"""

from __future__ import annotations

import datetime as dt
import re
import zipfile
from typing import IO, Any
from xml.etree import ElementTree

from . import Extracted, Settings, clean_value, join_pages
from .package import exists, open_package, parse, resolve

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
S = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
A = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
P = "{http://schemas.openxmlformats.org/presentationml/2006/main}"
R = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
REL = "{http://schemas.openxmlformats.org/package/2006/relationships}"
_CORE = {"title": "title", "creator": "author", "subject": "subject", "keywords": "keywords",
         "description": "description", "lastModifiedBy": "last_modified_by", "created": "created",
         "modified": "modified"}


def core_properties(zf: zipfile.ZipFile) -> dict[str, Any]:
    if not exists(zf, "docProps/core.xml"):
        return {}
    metadata: dict[str, Any] = {}
    for element in parse(zf, "docProps/core.xml"):
        tag = element.tag.rsplit("}", 1)[-1]
        if tag in _CORE and element.text and element.text.strip():
            metadata[_CORE[tag]] = clean_value(element.text)
    return metadata


def relationships(zf: zipfile.ZipFile, part: str) -> dict[str, tuple[str, str]]:
    """``rId`` -> (type suffix, member path) of a part's relationships."""
    folder, _, name = part.rpartition("/")
    rels = f"{folder}/_rels/{name}.rels" if folder else f"_rels/{name}.rels"
    if not exists(zf, rels):
        return {}
    found = {}
    for rel in parse(zf, rels).iter(f"{REL}Relationship"):
        if rel.get("TargetMode") == "External":
            continue
        kind = rel.get("Type", "").rsplit("/", 1)[-1]
        found[rel.get("Id", "")] = (kind, resolve(part, rel.get("Target", "")))
    return found


# -- DOCX

def read_docx(stream: IO[bytes], settings: Settings) -> Extracted:
    with open_package(stream, settings, "DOCX") as zf:
        metadata = core_properties(zf)
        body = _word_part(zf, "word/document.xml", settings)
        rels = relationships(zf, "word/document.xml")
        extra: dict[str, list[str]] = {"footnotes": [], "endnotes": [], "header": [], "footer": []}
        for kind, path in sorted(rels.values(), key=lambda r: _natural(r[1])):
            if kind in extra and exists(zf, path):
                text = _word_part(zf, path, settings, notes=kind in ("footnotes", "endnotes"))
                if text.strip():
                    extra[kind].append(text)
    sections = [body] + ["\n".join(extra[k]) for k in ("footnotes", "endnotes", "header", "footer") if extra[k]]
    for kind in ("footnotes", "endnotes"):
        if extra[kind]:
            metadata[kind] = True
    return Extracted("\n\n".join(s for s in sections if s), metadata)


def _word_part(zf: zipfile.ZipFile, name: str, settings: Settings, *, notes: bool = False) -> str:
    """The paragraphs of one WordprocessingML part; tables a row a line, cells by tabs."""
    lines: list[str] = []
    paragraphs: list[list[str]] = [[]]  # open paragraphs: a text box's paragraphs sit inside one
    current = paragraphs[-1]
    cells: list[list[str]] = []  # one list of cell texts per open table row (nested tables)
    cell_text: list[list[str]] = []
    count = 0
    with zf.open(name) as xml:
        for event, el in ElementTree.iterparse(xml, events=("start", "end")):
            tag = el.tag
            if event == "start":
                if tag == f"{W}p":
                    paragraphs.append([])
                    current = paragraphs[-1]
                elif tag == f"{W}tr":
                    cells.append([])
                elif tag == f"{W}tc":
                    cell_text.append([])
                continue
            if tag == f"{W}t" and el.text:
                current.append(el.text)
            elif tag == f"{W}tab":
                current.append("\t")
            elif tag in (f"{W}br", f"{W}cr"):
                current.append("\n")
            elif tag == f"{W}noBreakHyphen":
                current.append("-")
            elif tag == f"{W}p":
                paragraph = "".join(paragraphs.pop())
                current = paragraphs[-1]
                el.clear()
                if cell_text:
                    cell_text[-1].append(paragraph)
                else:
                    lines.append(paragraph)
                    count += len(paragraph)
                    if count > settings.max_chars:
                        break
            elif tag == f"{W}tc" and cell_text:
                text = " ".join(p for p in cell_text.pop() if p)
                if cells:
                    cells[-1].append(text)
            elif tag == f"{W}tr" and cells:
                row = "\t".join(cells.pop())
                if cell_text:
                    cell_text[-1].append(row)
                else:
                    lines.append(row)
            elif notes and tag in (f"{W}footnote", f"{W}endnote"):
                el.clear()
            elif tag == f"{W}body":
                el.clear()
    return "\n".join(line for line in lines if line.strip())


def _natural(path: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path)]


# -- XLSX

_DATE_FORMATS = set(range(14, 23)) | {45, 46, 47}
_DATE_CODE = re.compile(r"[dmyhs]", re.IGNORECASE)


def read_xlsx(stream: IO[bytes], settings: Settings) -> Extracted:
    with open_package(stream, settings, "XLSX") as zf:
        metadata = core_properties(zf)
        workbook = parse(zf, "xl/workbook.xml")
        rels = relationships(zf, "xl/workbook.xml")
        epoch = dt.datetime(1904, 1, 1) if any(
            p.get("date1904") in ("1", "true") for p in workbook.iter(f"{S}workbookPr")) else dt.datetime(1899, 12, 30)
        strings = _shared_strings(zf, rels)
        dates = _date_styles(zf, rels)
        names: list[str] = []
        pages: list[str] = []
        total = 0
        for sheet in workbook.iter(f"{S}sheet"):
            target = rels.get(sheet.get(f"{R}id", ""))
            if target is None or not exists(zf, target[1]):
                continue
            names.append(sheet.get("name", ""))
            rows = _sheet_rows(zf, target[1], strings, dates, epoch, settings.max_chars - total)
            page = "\n".join([names[-1], *rows])
            pages.append(page)
            total += len(page)
            if total > settings.max_chars:
                break
    text, offsets = join_pages(pages)
    metadata.update({"sheets": [clean_value(n) for n in names], "page_offsets": offsets})
    return Extracted(text, metadata, cleaned=True)


def _shared_strings(zf: zipfile.ZipFile, rels: dict[str, tuple[str, str]]) -> list[str]:
    path = next((p for kind, p in rels.values() if kind == "sharedStrings"), None)
    if path is None or not exists(zf, path):
        return []
    strings: list[str] = []
    with zf.open(path) as xml:
        for _, el in ElementTree.iterparse(xml):
            if el.tag == f"{S}si":
                # rich text runs (r/t) and plain t; phonetic guides (rPh) are not the value
                strings.append("".join(t.text or "" for t in el.iter(f"{S}t") if t not in _phonetic(el)))
                el.clear()
    return strings


def _phonetic(si: ElementTree.Element) -> set[ElementTree.Element]:
    return {t for rph in si.iter(f"{S}rPh") for t in rph.iter(f"{S}t")}


def _date_styles(zf: zipfile.ZipFile, rels: dict[str, tuple[str, str]]) -> set[int]:
    """Indexes of cell styles (``s``) whose number format shows a date or time."""
    path = next((p for kind, p in rels.values() if kind == "styles"), None)
    if path is None or not exists(zf, path):
        return set()
    root = parse(zf, path)
    custom = set()
    for fmt in root.iter(f"{S}numFmt"):
        code = re.sub(r'"[^"]*"|\[[^\]]*\]|\\.', "", fmt.get("formatCode", ""))
        if _DATE_CODE.search(code):
            custom.add(int(fmt.get("numFmtId", "0")))
    found = set()
    xfs = root.find(f"{S}cellXfs")
    for index, xf in enumerate(xfs if xfs is not None else []):
        fmt_id = int(xf.get("numFmtId", "0"))
        if fmt_id in _DATE_FORMATS or fmt_id in custom:
            found.add(index)
    return found


def _sheet_rows(zf: zipfile.ZipFile, path: str, strings: list[str], dates: set[int], epoch: dt.datetime,
                budget: int) -> list[str]:
    rows: list[str] = []
    row: list[str] = []
    used = 0
    with zf.open(path) as xml:
        for _, el in ElementTree.iterparse(xml):
            if el.tag == f"{S}c":
                row.append(_cell(el, strings, dates, epoch))
                el.clear()
            elif el.tag == f"{S}row":
                while row and not row[-1]:
                    row.pop()
                if row:
                    line = "\t".join(row)
                    rows.append(line)
                    used += len(line) + 1
                    if used > budget:
                        break
                row = []
                el.clear()
    return rows


def _cell(el: ElementTree.Element, strings: list[str], dates: set[int], epoch: dt.datetime) -> str:
    kind = el.get("t", "n")
    if kind == "inlineStr":
        return "".join(t.text or "" for t in el.iter(f"{S}t"))
    value = el.findtext(f"{S}v")  # the value as last calculated; a formula is in <f>, not read
    if value is None:
        return ""
    if kind == "s":
        try:
            return strings[int(value)]
        except (ValueError, IndexError):
            return ""
    if kind == "b":
        return "TRUE" if value == "1" else "FALSE"
    if kind == "n" and int(el.get("s", "0") or 0) in dates:
        try:
            moment = epoch + dt.timedelta(days=float(value))
        except (ValueError, OverflowError):
            return value
        if moment.time() == dt.time(0):
            return moment.date().isoformat()
        return moment.isoformat(timespec="seconds")
    return value


# -- PPTX

def read_pptx(stream: IO[bytes], settings: Settings) -> Extracted:
    with open_package(stream, settings, "PPTX") as zf:
        metadata = core_properties(zf)
        presentation = parse(zf, "ppt/presentation.xml")
        rels = relationships(zf, "ppt/presentation.xml")
        slides: list[str] = []
        notes_count = 0
        total = 0
        for slide_id in presentation.iter(f"{P}sldId"):
            target = rels.get(slide_id.get(f"{R}id", ""))
            if target is None or not exists(zf, target[1]):
                continue
            parts = [_drawing_text(parse(zf, target[1]))]
            for kind, path in relationships(zf, target[1]).values():
                if kind == "notesSlide" and exists(zf, path):
                    notes = _drawing_text(parse(zf, path), skip_placeholders=("sldNum", "sldImg", "hdr", "ftr", "dt"))
                    if notes.strip():
                        parts.append(notes)
                        notes_count += 1
            slides.append("\n\n".join(p for p in parts if p.strip()))
            total += len(slides[-1])
            if total > settings.max_chars:
                break
    text, offsets = join_pages(slides)
    metadata.update({"slides": len(slides), "notes": notes_count, "page_offsets": offsets})
    return Extracted(text, metadata, cleaned=True)


def _drawing_text(root: ElementTree.Element, skip_placeholders: tuple[str, ...] = ()) -> str:
    """Paragraphs of a slide's shapes (text boxes, placeholders, tables, groups), in order."""
    lines: list[str] = []
    for shape in root.iter():
        if shape.tag not in (f"{P}sp", f"{P}graphicFrame"):
            continue
        placeholder = shape.find(f"{P}nvSpPr/{P}nvPr/{P}ph")
        if placeholder is not None and placeholder.get("type") in skip_placeholders:
            continue
        for paragraph in shape.iter(f"{A}p"):
            pieces = []
            for node in paragraph:
                if node.tag == f"{A}r" or (node.tag == f"{A}fld" and not node.get("type", "").startswith("slidenum")):
                    pieces.append(node.findtext(f"{A}t") or "")
                elif node.tag == f"{A}br":
                    pieces.append("\n")
            line = "".join(pieces)
            if line.strip():
                lines.append(line)
    return "\n".join(lines)
