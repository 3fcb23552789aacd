"""Text and metadata out of documents, one module per format family.

:func:`extract` takes a seekable byte stream and the object's key, decompresses it if it
is gzip / bz2 / xz / zstd (bounded), finds its type from its content first
(:mod:`.detect`), then hands it to the reader of that type:

    pdf         pdf.py      pypdfium2 (one document at a time per process), OCR of pages
                            without text
    docx, xlsx, pptx        office.py   the OOXML parts, read with zipfile + ElementTree
    odt, ods, odp           odf.py      content.xml / styles.xml / meta.xml
    epub        epub.py     the OPF spine, each chapter through the HTML reader
    eml         mail.py     the standard library's email parser
    rtf         rtf.py      striprtf
    html, xml, markdown     markup.py
    text, csv, json         text.py     decoded while streaming (UTF-8/16/32, BOM or not)
    png, jpeg, tiff         ocr.py      Tesseract, as a child process

``package.py`` opens the zip-based formats with bounds on what their members expand to.

A reader's library is imported when the first object of its type arrives. Every failure
that trying again cannot cure raises :class:`~flexingest.exceptions.UnprocessableObject`.
"""

from __future__ import annotations

import importlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Literal

from ..exceptions import UnprocessableObject

#: kind -> "module:function" of its reader (imported on first use)
READERS: dict[str, str] = {
    "csv": "text:read_csv",
    "docx": "office:read_docx",
    "eml": "mail:read_eml",
    "epub": "epub:read_epub",
    "html": "markup:read_html",
    "image": "ocr:read_image",
    "json": "text:read_json",
    "markdown": "markup:read_markdown",
    "odp": "odf:read_odf",
    "ods": "odf:read_odf",
    "odt": "odf:read_odf",
    "pdf": "pdf:read_pdf",
    "pptx": "office:read_pptx",
    "rtf": "rtf:read_rtf",
    "text": "text:read_text",
    "xlsx": "office:read_xlsx",
    "xml": "markup:read_xml",
}

SUPPORTED = ("PDF, DOCX, XLSX, PPTX, ODT/ODS/ODP, EPUB, EML, RTF, HTML, XML, Markdown, text, CSV, JSON, "
             "images (with OCR); gzip/bz2/xz/zstd of these")
DOCUMENTS_EXTRA = "pip install 'flexingest[documents]'"


@dataclass(frozen=True)
class Settings:
    """What the ``extract_text`` options say, as the readers need it."""

    max_chars: int = 10_000_000
    max_bytes: int = 256 * 1024 * 1024
    max_decompressed: int = 256 * 1024 * 1024
    password: str | None = None
    ocr: Literal["auto", "never", "always"] = "never"
    ocr_languages: str = "eng"
    ocr_timeout: float = 120.0
    ocr_dpi: int = 300


@dataclass
class Extracted:
    """A reader's result: the text and what is known about the document."""

    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    #: the text went through :func:`join_pages` (cleaned already)
    cleaned: bool = False


Reader = Callable[[IO[bytes], Settings], Extracted]
_readers: dict[str, Reader] = {}


def reader(kind: str) -> Reader:
    """The reader function of ``kind``, imported on first use."""
    found = _readers.get(kind)
    if found is None:
        module, _, name = READERS[kind].partition(":")
        found = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        _readers[kind] = found
    return found


def extract(stream: IO[bytes], key: str, settings: Settings, *, content_type: str | None = None,
            size: int | None = None) -> Extracted:
    """Text and metadata of one object; ``stream`` must be seekable.

    Raises :class:`UnsupportedType` for a type no reader handles, and
    :class:`UnprocessableObject` for an object that no retry will make readable.
    """
    from . import compress, detect

    compression = compress.detect(stream, key)
    if compression is not None:
        with compress.decompressed(stream, compression, settings.max_decompressed) as inner:
            result = extract(inner, compress.inner_name(key, compression), settings,
                             content_type=None, size=None)
        result.metadata["compression"] = compression
        return result
    kind = detect.detect(stream, key, content_type)
    if kind is None or kind not in READERS or (kind == "image" and settings.ocr == "never"):
        raise UnsupportedType(kind)
    if kind in detect.RANDOM_ACCESS and size is not None and size > settings.max_bytes:
        raise UnprocessableObject(
            f"{detect.label(kind)} of {size} bytes is larger than max_bytes ({settings.max_bytes}); "
            "it is read whole: raise max_bytes in the step options to extract it")
    stream.seek(0)
    result = reader(kind)(stream, settings)
    if not result.cleaned:
        result.text = clean(result.text)
    result.metadata = {"type": kind, **result.metadata}
    return result


class UnsupportedType(Exception):
    """No reader for this object; ``kind`` is what detection found (e.g. ``zip``), or None."""

    def __init__(self, kind: str | None) -> None:
        super().__init__(kind)
        self.kind = kind


# -- text hygiene shared by every reader

# C0 controls but tab and newline, DEL, C1 controls, the non-characters U+FFFE/U+FFFF and
# lone surrogates: what unmapped glyphs and binary junk leave in extracted text
_JUNK = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufffe\uffff\ud800-\udfff]")
_LIGATURES = re.compile("[\ufb00-\ufb4f]")  # alphabetic presentation forms: ﬁ ﬂ ﬀ ﬃ ﬄ ﬅ ﬆ ...
_VISIBLE = re.compile("[^\\s\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufffe\uffff\ud800-\udfff]")


def clean(text: str) -> str:
    """Newlines made ``\\n``, ligatures spelled out (NFKC), control junk removed."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\x0c", "\n").replace("\x0b", "\n")
    text = _LIGATURES.sub(lambda m: unicodedata.normalize("NFKC", m.group(0)), text)
    return _JUNK.sub("", text)


def blank(text: str) -> bool:
    """Nothing but white space and the junk :func:`clean` removes (a page to OCR)."""
    return _VISIBLE.search(text) is None


def clean_value(value: Any) -> Any:
    """A metadata value with the same hygiene as text (strings, lists and dicts of them)."""
    if isinstance(value, str):
        return clean(value).strip()
    if isinstance(value, list):
        return [clean_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): clean_value(v) for k, v in value.items()}
    return value


def join_pages(pages: list[str], separator: str = "\n\n") -> tuple[str, list[int]]:
    """Pages cleaned and joined by ``separator``, and the offset where each page starts."""
    pages = [clean(page).strip("\n") for page in pages]
    offsets: list[int] = []
    position = 0
    for page in pages:
        offsets.append(position)
        position += len(page) + len(separator)
    return separator.join(pages), offsets
