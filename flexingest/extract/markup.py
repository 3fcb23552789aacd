"""HTML (text without scripts or styles), XML (text content, not tags) and Markdown
(YAML front matter as metadata, not text)."""

from __future__ import annotations

import datetime as dt
import io
from html.parser import HTMLParser
from typing import IO, Any, cast
from xml.etree import ElementTree

from ..exceptions import UnprocessableObject
from . import Extracted, Settings, clean_value
from .text import decode

FRONT_MATTER_MAX = 64 * 1024


class HTMLText(HTMLParser):
    """The visible text of an HTML document, a line per block, and its title."""

    SKIP = {"script", "style", "noscript", "template", "svg", "head"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
             "header", "footer", "table", "ul", "ol", "pre", "blockquote", "hr", "title", "dd", "dt",
             "figcaption", "aside", "nav", "main"}

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


def html_to_text(html: str) -> tuple[str, str]:
    """(text, title) of an HTML string."""
    parser = HTMLText()
    parser.feed(html)
    parser.close()
    return parser.text(), parser.title


def xhtml_to_text(data: bytes) -> tuple[str, str]:
    """(text, title) of well-formed XHTML, parsed by expat (several times faster than
    :class:`HTMLText`); ElementTree.ParseError when it is not well-formed XML."""
    root = ElementTree.fromstring(data)
    parts: list[str] = []
    title = ""

    def walk(element: ElementTree.Element) -> None:
        nonlocal title
        tag = element.tag.rsplit("}", 1)[-1].lower() if isinstance(element.tag, str) else ""
        if tag == "title":
            title = title or "".join(element.itertext()).strip()
        if tag in HTMLText.SKIP:
            parts.append(element.tail or "")
            return
        block = tag in HTMLText.BLOCK
        parts.append("\n" if block else ("\t" if tag in ("td", "th") else ""))
        parts.append(element.text or "")
        for child in element:
            walk(child)
        parts.append("\n" if block else "")
        parts.append(element.tail or "")

    walk(root)
    lines = (" ".join(line.split()) for line in "".join(parts).splitlines())
    return "\n".join(line for line in lines if line), title


def read_html(stream: IO[bytes], settings: Settings) -> Extracted:
    result = decode(stream, settings)
    text, title = html_to_text(result.text)
    if title:
        result.metadata["title"] = title
    result.text = text
    return result


def read_xml(stream: IO[bytes], settings: Settings) -> Extracted:
    """Every element's text, a line each; the root element's name as ``xml_root``.

    Decoded as the other texts (BOM, NUL pattern), then parsed: the declaration's encoding
    is honoured by decoding with it when there is no BOM.
    """
    stream.seek(0)
    raw = stream.read(settings.max_bytes + 1)
    if len(raw) > settings.max_bytes:
        raise UnprocessableObject(f"XML larger than max_bytes ({settings.max_bytes}): it is parsed whole")
    decoded = decode(io.BytesIO(raw), settings)
    source = decoded.text
    declared = _declared_encoding(source)
    if declared and decoded.metadata["encoding"] in ("utf-8", "windows-1252") and not raw.startswith(b"\xef\xbb\xbf"):
        try:
            source = raw.decode(declared)
            decoded.metadata["encoding"] = declared.lower()
        except (LookupError, UnicodeDecodeError):
            pass
    lines: list[str] = []
    root = ""
    parser: ElementTree.XMLPullParser[ElementTree.Element] = ElementTree.XMLPullParser(events=("start", "end"))
    try:
        # the declaration would name an encoding the text no longer has: parse it as text
        parser.feed(_strip_declaration(source))
        parser.close()
        for item in parser.read_events():
            event, element = cast("tuple[str, object]", item)
            if not isinstance(element, ElementTree.Element):
                continue
            if event == "start":
                if not root:
                    root = element.tag.rsplit("}", 1)[-1]
                continue
            if element.text and element.text.strip():
                lines.append(" ".join(element.text.split()))
            if element.tail and element.tail.strip():
                lines.append(" ".join(element.tail.split()))
    except ElementTree.ParseError as exc:
        raise UnprocessableObject(f"invalid XML: {exc}; the object's bytes will not change on retry") from None
    metadata: dict[str, Any] = {"encoding": decoded.metadata["encoding"], "xml_root": root}
    if decoded.metadata.get("truncated"):
        metadata["truncated"] = True
    return Extracted("\n".join(lines), metadata)


def _declared_encoding(text: str) -> str | None:
    if not text.startswith("<?xml"):
        return None
    end = text.find("?>")
    declaration = text[:end]
    for quote in ('"', "'"):
        marker = f"encoding={quote}"
        at = declaration.find(marker)
        if at >= 0:
            start = at + len(marker)
            return declaration[start:declaration.find(quote, start)]
    return None


def _strip_declaration(text: str) -> str:
    if text.startswith("<?xml"):
        end = text.find("?>")
        if end > 0:
            return text[end + 2:]
    return text


def read_markdown(stream: IO[bytes], settings: Settings) -> Extracted:
    """Markdown as text; a leading ``---`` YAML block becomes ``metadata.front_matter``."""
    result = decode(stream, settings)
    text = result.text
    if text.startswith("---\n") or text.startswith("---\r\n"):
        body_start = _front_matter_end(text)
        front = None if body_start is None else _load_front_matter(text[: body_start[0]])
        if front is not None and body_start is not None:
            text = text[body_start[1]:]
            if front:
                result.metadata["front_matter"] = front
                for field in ("title", "author", "date", "tags"):
                    if field in front and field not in result.metadata:
                        result.metadata[field] = front[field]
    result.text = text
    return result


def _front_matter_end(text: str) -> tuple[int, int] | None:
    """(end of the YAML block, start of the body) when a closing ``---``/``...`` line follows."""
    position = text.index("\n") + 1
    while position < min(len(text), FRONT_MATTER_MAX):
        end = text.find("\n", position)
        line = text[position: end if end >= 0 else len(text)].rstrip("\r")
        if line in ("---", "..."):
            return position, (end + 1 if end >= 0 else len(text))
        if end < 0:
            return None
        position = end + 1
    return None


def _load_front_matter(block: str) -> dict[str, Any] | None:
    import yaml

    try:
        value = yaml.safe_load(block.split("\n", 1)[1])
    except yaml.YAMLError:
        return None  # not front matter after all: the block stays in the text
    if not isinstance(value, dict):
        return None
    budget = [10_000]  # aliases can make a small block expand without end
    try:
        return {str(k): _jsonable(v, budget) for k, v in value.items()}
    except RecursionError:
        return None
    except OverflowError:
        return {}


def _jsonable(value: Any, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise OverflowError("front matter too large")
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v, budget) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, budget) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return clean_value(value)
    return str(value)
