"""EPUB: the chapters of the package's spine in reading order, each through the HTML
reader and each a "page"; the OPF's Dublin Core fields as metadata."""

from __future__ import annotations

from typing import IO, Any
from urllib.parse import unquote
from xml.etree import ElementTree

from ..exceptions import UnprocessableObject
from . import Extracted, Settings, clean_value, join_pages
from .markup import html_to_text, xhtml_to_text
from .package import exists, open_package, parse, resolve

CONTAINER = "{urn:oasis:names:tc:opendocument:xmlns:container}"
OPF = "{http://www.idpf.org/2007/opf}"
DC = "{http://purl.org/dc/elements/1.1/}"
_DC = {"title": "title", "creator": "author", "language": "language", "publisher": "publisher",
       "date": "date", "subject": "subject", "identifier": "identifier", "description": "description"}
HTML_TYPES = {"application/xhtml+xml", "text/html", "application/x-dtbook+xml"}


def read_epub(stream: IO[bytes], settings: Settings) -> Extracted:
    with open_package(stream, settings, "EPUB") as zf:
        if not exists(zf, "META-INF/container.xml"):
            raise UnprocessableObject("cannot read EPUB: META-INF/container.xml is missing")
        rootfile = parse(zf, "META-INF/container.xml").find(f".//{CONTAINER}rootfile")
        opf_path = rootfile.get("full-path", "") if rootfile is not None else ""
        if not exists(zf, opf_path):
            raise UnprocessableObject(f"cannot read EPUB: its package document {opf_path!r} is missing")
        opf = parse(zf, opf_path)
        metadata: dict[str, Any] = {}
        for element in opf.iterfind(f"{OPF}metadata/*"):
            field = _DC.get(element.tag.removeprefix(DC)) if element.tag.startswith(DC) else None
            if field and element.text and element.text.strip():
                if field == "author" and "author" in metadata:
                    metadata.setdefault("authors", [metadata["author"]]).append(clean_value(element.text))
                elif field not in metadata:
                    metadata[field] = clean_value(element.text)
        manifest = {item.get("id", ""): (item.get("href", ""), item.get("media-type", ""))
                    for item in opf.iterfind(f"{OPF}manifest/{OPF}item")}
        chapters: list[str] = []
        total = 0
        for ref in opf.iterfind(f"{OPF}spine/{OPF}itemref"):
            href, media = manifest.get(ref.get("idref", ""), ("", ""))
            path = resolve(opf_path, unquote(href.split("#", 1)[0]))
            if media not in HTML_TYPES or not exists(zf, path):
                continue
            data = zf.read(path)
            try:
                text, _ = xhtml_to_text(data)
            except ElementTree.ParseError:  # HTML entities without their DTD, or not XML at all
                text, _ = html_to_text(data.decode("utf-8", "replace"))
            if text.strip():
                chapters.append(text)
                total += len(text)
                if total > settings.max_chars:
                    break
    text, offsets = join_pages(chapters)
    metadata.update({"chapters": len(chapters), "page_offsets": offsets})
    return Extracted(text, metadata, cleaned=True)
