"""``extract_text``: text and metadata from PDF, DOCX, HTML, text/Markdown, CSV and JSON.

The type comes from the key's extension, else from the first bytes. Text formats are
decoded while streaming and cut at ``max_chars`` (``metadata.truncated``), so a huge
object never sits whole in memory; PDF and DOCX need random access and are refused
above ``max_bytes``.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import zipfile
from html.parser import HTMLParser
from typing import IO, Any, Literal
from xml.etree import ElementTree

from pydantic import ByteSize, Field

from ..exceptions import ObjectSkipped, StepError
from ..objects import Source
from ..units import Size
from . import Record, Step, StepOptions

EXTENSIONS = {
    ".pdf": "pdf", ".docx": "docx",
    ".html": "html", ".htm": "html", ".xhtml": "html",
    ".txt": "text", ".text": "text", ".md": "text", ".markdown": "text", ".rst": "text", ".log": "text",
    ".csv": "csv", ".tsv": "csv",
    ".json": "json", ".jsonl": "text", ".ndjson": "text",
}
SUPPORTED = "PDF, DOCX, HTML, text/Markdown, CSV, JSON"


class ExtractTextOptions(StepOptions):
    on_unsupported: Literal["fail", "skip"] = Field(
        "fail", description="an object of another type fails (default) or is skipped and recorded done")
    max_chars: int = Field(10_000_000, ge=1, description="text beyond this is cut (metadata.truncated)")
    max_bytes: Size = Field(ByteSize(256 * 1024 * 1024),
                            description="PDF/DOCX larger than this fail: they are read whole")


class ExtractText(Step):
    Options = ExtractTextOptions
    options: ExtractTextOptions

    def process(self, record: Record, source: Source) -> Record:
        kind = self._kind(source)
        if kind is None:
            message = f"unsupported type for extract_text: {source.key!r} (supported: {SUPPORTED})"
            if self.options.on_unsupported == "skip":
                raise ObjectSkipped(message)
            raise StepError(message)
        if kind in ("pdf", "docx") and source.size > self.options.max_bytes:
            raise StepError(f"{kind.upper()} of {source.size} bytes is larger than max_bytes "
                            f"({int(self.options.max_bytes)}); raise it in the step options to extract it")
        with source.open() as stream:
            text, metadata = getattr(self, f"_{kind}")(stream)
        if len(text) > self.options.max_chars:
            text = text[: self.options.max_chars]
            metadata["truncated"] = True
        record["text"] = text
        record["metadata"] = {**record.get("metadata", {}), "type": kind, **metadata}
        return record

    def _kind(self, source: Source) -> str | None:
        name = source.key.rsplit("/", 1)[-1].lower()
        dot = name.rfind(".")
        if dot > 0 and name[dot:] in EXTENSIONS:
            return EXTENSIONS[name[dot:]]
        with source.open() as stream:
            head = stream.read(2048)
        if head.startswith(b"%PDF"):
            return "pdf"
        if head.startswith(b"PK\x03\x04") and b"word/" in head:
            return "docx"
        lowered = head.lstrip().lower()
        if lowered.startswith((b"<!doctype html", b"<html")):
            return "html"
        if b"\x00" not in head:
            try:
                head.decode("utf-8")
                return "text"
            except UnicodeDecodeError as exc:
                if exc.start >= len(head) - 3:  # cut in the middle of a character
                    return "text"
        return None

    # -- text formats: streamed, cut at max_chars

    def _read_text(self, stream: IO[bytes]) -> tuple[str, dict[str, Any]]:
        limit = self.options.max_chars
        head = stream.read(4)
        encoding = "utf-8"
        if head.startswith(codecs.BOM_UTF8):
            encoding = "utf-8-sig"
        elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            encoding = "utf-16"
        chunks: list[str] = []
        count = 0
        decoder = codecs.getincrementaldecoder(encoding)()
        data = head
        truncated = False
        fallback = False
        while True:
            try:
                piece = decoder.decode(data, final=not data)
            except UnicodeDecodeError:
                if fallback:
                    raise
                # not UTF-8: fall back to Windows-1252/Latin-1 for the whole object
                fallback = True
                encoding = "latin-1"
                decoder = codecs.getincrementaldecoder("latin-1")()
                stream.seek(0)
                chunks, count, data = [], 0, stream.read(1 << 20)
                continue
            chunks.append(piece)
            count += len(piece)
            if count > limit:
                truncated = True
                break
            if not data:
                break
            data = stream.read(1 << 20)
        metadata: dict[str, Any] = {"encoding": encoding.replace("-sig", "")}
        if truncated:
            metadata["truncated"] = True
        return "".join(chunks), metadata

    def _text(self, stream: IO[bytes]) -> tuple[str, dict[str, Any]]:
        return self._read_text(stream)

    def _csv(self, stream: IO[bytes]) -> tuple[str, dict[str, Any]]:
        text, metadata = self._read_text(stream)
        sample = text[:65536]
        try:
            dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
        rows = csv.reader(io.StringIO(sample), dialect)
        header = next(rows, [])
        metadata["columns"] = header
        if not metadata.get("truncated"):
            metadata["rows"] = max(0, sum(1 for _ in csv.reader(io.StringIO(text), dialect)) - 1)
        return text, metadata

    def _json(self, stream: IO[bytes]) -> tuple[str, dict[str, Any]]:
        text, metadata = self._read_text(stream)
        if not metadata.get("truncated"):
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise StepError(f"invalid JSON: {exc}") from None
            metadata["json_type"] = type(value).__name__ if not isinstance(value, dict) else "object"
            if isinstance(value, dict):
                metadata["keys"] = list(value)[:100]
        return text, metadata

    def _html(self, stream: IO[bytes]) -> tuple[str, dict[str, Any]]:
        text, metadata = self._read_text(stream)
        parser = _HTMLText()
        parser.feed(text)
        parser.close()
        if parser.title:
            metadata["title"] = parser.title
        return parser.text(), metadata

    # -- binary formats: random access

    def _pdf(self, stream: IO[bytes]) -> tuple[str, dict[str, Any]]:
        import logging

        from pypdf import PdfReader
        from pypdf.errors import PdfReadError

        logging.getLogger("pypdf").setLevel(logging.ERROR)
        try:
            reader = PdfReader(stream)
            if reader.is_encrypted and not reader.decrypt(""):
                raise StepError("the PDF is encrypted with a password")
            pages: list[str] = []
            count = 0
            for page in reader.pages:
                pages.append(page.extract_text() or "")
                count += len(pages[-1])
                if count > self.options.max_chars:
                    break
            info: Any = reader.metadata or {}
            metadata: dict[str, Any] = {"pages": len(reader.pages)}
            for field, key in (("title", "/Title"), ("author", "/Author"), ("subject", "/Subject")):
                value = info.get(key)
                if value:
                    metadata[field] = str(value)
        except StepError:
            raise
        except (PdfReadError, ValueError, KeyError, TypeError, AssertionError) as exc:
            raise StepError(f"cannot read PDF: {exc}") from None
        return "\n\n".join(pages), metadata

    def _docx(self, stream: IO[bytes]) -> tuple[str, dict[str, Any]]:
        w = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
        try:
            with zipfile.ZipFile(stream) as zf:
                metadata: dict[str, Any] = {}
                if "docProps/core.xml" in zf.namelist():
                    core = ElementTree.fromstring(zf.read("docProps/core.xml")[:1_000_000])
                    for el in core:
                        tag = el.tag.rsplit("}", 1)[-1]
                        if tag in ("title", "creator", "subject") and el.text:
                            metadata["author" if tag == "creator" else tag] = el.text
                paragraphs: list[str] = []
                current: list[str] = []
                count = 0
                with zf.open("word/document.xml") as xml:
                    for event, el in ElementTree.iterparse(xml, events=("start", "end")):
                        if event == "start":
                            continue
                        if el.tag == f"{w}t" and el.text:
                            current.append(el.text)
                        elif el.tag == f"{w}tab":
                            current.append("\t")
                        elif el.tag in (f"{w}br", f"{w}cr"):
                            current.append("\n")
                        elif el.tag == f"{w}p":
                            paragraphs.append("".join(current))
                            count += len(paragraphs[-1])
                            current = []
                            el.clear()
                            if count > self.options.max_chars:
                                break
                        elif el.tag == f"{w}tc":
                            paragraphs.append("\t")
        except (zipfile.BadZipFile, KeyError, ElementTree.ParseError) as exc:
            raise StepError(f"cannot read DOCX: {exc}") from None
        text = "\n".join(p for p in paragraphs if p != "\t")
        return text, metadata


class _HTMLText(HTMLParser):
    SKIP = {"script", "style", "noscript", "template", "svg", "head"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
             "header", "footer", "table", "ul", "ol", "pre", "blockquote", "hr", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.in_title = False
        self.title = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in self.SKIP:
            self.skipping += 1
        if tag in self.BLOCK or tag in ("td", "th"):
            self.parts.append("\n" if tag in self.BLOCK else "\t")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in self.SKIP and self.skipping:
            self.skipping -= 1
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title += data.strip()
        elif not self.skipping:
            self.parts.append(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self.parts).splitlines())
        return "\n".join(line for line in lines if line)
