"""What an object is: its content first, then its key's extension (and Content-Type).

Binary signatures decide alone: a ``.bin`` that starts ``%PDF`` is a PDF, a zip is told
apart by its ``mimetype`` member (ODF, EPUB) or ``[Content_Types].xml`` (OOXML). For text,
the encoding comes from a BOM or, without one, from the pattern of NUL bytes (UTF-16/32);
the extension then says which text format (CSV, JSON, Markdown, ...), unless it names a
binary format the content contradicts: a ``.pdf`` that is HTML is HTML.
"""

from __future__ import annotations

import codecs
import re
import zipfile
from typing import IO

HEAD = 8192

EXTENSIONS: dict[str, str] = {
    ".pdf": "pdf", ".docx": "docx", ".docm": "docx", ".xlsx": "xlsx", ".xlsm": "xlsx",
    ".pptx": "pptx", ".pptm": "pptx", ".odt": "odt", ".ods": "ods", ".odp": "odp", ".epub": "epub",
    ".eml": "eml", ".rtf": "rtf", ".xml": "xml", ".html": "html", ".htm": "html", ".xhtml": "html",
    ".md": "markdown", ".markdown": "markdown",
    ".txt": "text", ".text": "text", ".rst": "text", ".log": "text", ".jsonl": "text", ".ndjson": "text",
    ".csv": "csv", ".tsv": "csv", ".json": "json",
    ".png": "image", ".jpg": "image", ".jpeg": "image", ".tif": "image", ".tiff": "image",
}
#: kinds whose content is text: the extension may pick among them
TEXT_KINDS = {"text", "csv", "json", "markdown", "html", "xml", "eml"}
#: kinds read with random access (held whole or seeked): bounded by max_bytes
RANDOM_ACCESS = {"pdf", "docx", "xlsx", "pptx", "odt", "ods", "odp", "epub", "eml", "rtf", "image"}
CONTENT_TYPES: dict[str, str] = {
    "application/pdf": "pdf", "text/html": "html", "application/xhtml+xml": "html", "text/csv": "csv",
    "application/json": "json", "text/markdown": "markdown", "message/rfc822": "eml", "application/rtf": "rtf",
    "text/rtf": "rtf", "application/xml": "xml", "text/xml": "xml", "text/plain": "text",
}

_OOXML = (
    ("wordprocessingml.document.main", "docx"), ("ms-word.document.macroEnabled.main", "docx"),
    ("spreadsheetml.sheet.main", "xlsx"), ("ms-excel.sheet.macroEnabled.main", "xlsx"),
    ("presentationml.presentation.main", "pptx"), ("ms-powerpoint.presentation.macroEnabled.main", "pptx"),
    ("presentationml.slideshow.main", "pptx"),
)
_ODF = {
    "application/vnd.oasis.opendocument.text": "odt",
    "application/vnd.oasis.opendocument.spreadsheet": "ods",
    "application/vnd.oasis.opendocument.presentation": "odp",
    "application/epub+zip": "epub",
}
_EMAIL_HEADER = re.compile(
    rb"^(?:(?:Return-Path|Received|From|To|Subject|Date|Message-ID|MIME-Version|Delivered-To|X-[\w-]+):[ \t])",
    re.IGNORECASE)
_LABELS = {"text": "text", "markdown": "Markdown", "image": "image", "eml": "EML", "epub": "EPUB"}


def label(kind: str) -> str:
    """How a kind is named in messages: ``PDF``, ``DOCX``, ``Markdown``."""
    return _LABELS.get(kind, kind.upper())


def extension(key: str) -> str:
    name = key.rsplit("/", 1)[-1].lower()
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""


def detect(stream: IO[bytes], key: str, content_type: str | None = None) -> str | None:
    """The kind of the object (a key of ``READERS``, or ``zip``, ``tar``, ``ole``), or None."""
    stream.seek(0)
    head = stream.read(HEAD)
    by_name = EXTENSIONS.get(extension(key))
    if by_name is None and content_type:
        by_name = CONTENT_TYPES.get(content_type.split(";")[0].strip().lower())
    binary = _signature(head, stream)
    if binary is not None:
        return binary
    encoding = sniff_encoding(head)
    if encoding is None:
        # no BOM, no NUL pattern: UTF-8, or an 8-bit text if it looks like one
        if b"\x00" in head or not looks_like_text(head):
            return "text" if by_name in TEXT_KINDS else None
        encoding = "utf-8"
    text = head.decode(encoding.replace("-sig", ""), "ignore").lstrip("\ufeff")
    if by_name in TEXT_KINDS:
        return by_name
    return _sniff_text(text, head)


def _signature(head: bytes, stream: IO[bytes]) -> str | None:
    if b"%PDF-" in head[:1024]:
        return "pdf"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip_kind(stream)
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "ole"
    if head.startswith(b"{\\rtf"):
        return "rtf"
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")):
        return "image"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def _zip_kind(stream: IO[bytes]) -> str:
    try:
        stream.seek(0)
        with zipfile.ZipFile(stream) as zf:
            names = set(zf.namelist())
            if "mimetype" in names:
                info = zf.getinfo("mimetype")
                if info.file_size < 200:
                    kind = _ODF.get(zf.read(info).decode("ascii", "replace").strip())
                    if kind:
                        return kind
            if "[Content_Types].xml" in names:
                info = zf.getinfo("[Content_Types].xml")
                if info.file_size < 1_000_000:
                    types = zf.read(info).decode("utf-8", "replace")
                    for needle, kind in _OOXML:
                        if needle in types:
                            return kind
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, NotImplementedError, EOFError):
        return "zip"
    return "zip"


def sniff_encoding(head: bytes) -> str | None:
    """The encoding a BOM or a NUL pattern gives away, or None (then UTF-8 or 8-bit)."""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    sample = head[:4096]
    sample = sample[: len(sample) - len(sample) % 4]
    if len(sample) < 4:
        return None
    quads = len(sample) // 4
    # UTF-32 text: three NULs in every four bytes (for the Basic Multilingual Plane)
    if sum(1 for i in range(0, len(sample), 4) if sample[i + 1:i + 4] == b"\x00\x00\x00" and sample[i]) > quads * 0.9:
        return "utf-32-le"
    if sum(1 for i in range(0, len(sample), 4) if sample[i:i + 3] == b"\x00\x00\x00" and sample[i + 3]) > quads * 0.9:
        return "utf-32-be"
    pairs = len(sample) // 2
    even = sum(1 for i in range(0, len(sample), 2) if sample[i] == 0)
    odd = sum(1 for i in range(1, len(sample), 2) if sample[i] == 0)
    # UTF-16 text in Latin scripts: NUL as the high byte of most characters, never as the low
    if odd > pairs * 0.4 and even < pairs * 0.02:
        return "utf-16-le"
    if even > pairs * 0.4 and odd < pairs * 0.02:
        return "utf-16-be"
    return None


def looks_like_text(data: bytes) -> bool:
    """UTF-8, or 8-bit text: no control bytes but tab, newline, carriage return, form feed."""
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        if exc.start >= len(data) - 3 and exc.reason == "unexpected end of data":
            return True  # cut in the middle of a character
    return windows_1252(data)


_CONTROLS = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f\x81\x8d\x8f\x90\x9d]")


def windows_1252(data: bytes) -> bool:
    """Whether ``data`` is plausibly Windows-1252 (or Latin-1) text."""
    return _CONTROLS.search(data) is None


def _sniff_text(text: str, head: bytes) -> str:
    start = text.lstrip()[:1024].lower()
    if start.startswith(("<!doctype html", "<html")):
        return "html"
    if start.startswith(("<?xml", "<!--")):
        return "html" if "<html" in start[:512] else "xml"
    if start.startswith("<!doctype"):
        return "xml"
    if re.match(r"<[a-z_][\w.:-]*[\s>/]", start) and start.rstrip().endswith(">"):
        return "xml"
    if _EMAIL_HEADER.match(head) and b"\n\n" in head.replace(b"\r\n", b"\n"):
        lines = head.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].split(b"\n")
        if len(lines) >= 2 and all(_EMAIL_HEADER.match(line) or line[:1] in (b" ", b"\t") or
                                   re.match(rb"^[\w-]+:", line) for line in lines):
            return "eml"
    return "text"
