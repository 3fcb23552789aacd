"""``chunk``: the record's text in overlapping pieces, for retrieval.

``record["chunks"]`` becomes a list of ``{"index", "text", "start", "end", "pages"}``:
``text == record["text"][start:end]``, and ``pages`` lists the page (slide, sheet,
chapter) numbers the piece spans, from ``metadata.page_offsets`` when extract_text
recorded them (``[]`` otherwise). Pieces are at most ``size`` characters (or words) and
end at a paragraph break, else a sentence end, else a space, when one lies in their
second half; each starts ``overlap`` before the end of the previous one, at a word start.

The chunks stay in the one record (the object remains the unit of state and of output):
``write_jsonl``, ``write_json`` and ``webhook`` carry them as they are.
"""

from __future__ import annotations

import bisect
import re
from typing import Literal

from pydantic import Field, model_validator

from ..objects import Source
from . import Record, Step, StepOptions

_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"[.!?…。](?:[\"'”’)\]]*)\s")
_SPACE = re.compile(r"\s")
_WORD = re.compile(r"\S+")


class ChunkOptions(StepOptions):
    size: int = Field(1000, ge=1, description="the most characters (or words) in a piece")
    overlap: int = Field(100, ge=0, description="characters (or words) a piece repeats of the previous one")
    unit: Literal["chars", "words"] = Field("chars", description="what size and overlap count")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkOptions:
        if self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self


class Chunk(Step):
    Options = ChunkOptions
    options: ChunkOptions

    def process(self, record: Record, source: Source) -> Record:
        text = record.get("text") or ""
        offsets = (record.get("metadata") or {}).get("page_offsets") or []
        spans = (chunk_words(text, self.options.size, self.options.overlap) if self.options.unit == "words"
                 else chunk_chars(text, self.options.size, self.options.overlap))
        record["chunks"] = [
            {"index": i, "text": text[start:end], "start": start, "end": end, "pages": pages(offsets, start, end)}
            for i, (start, end) in enumerate(spans)]
        return record


def pages(offsets: list[int], start: int, end: int) -> list[int]:
    """1-based numbers of the pages that ``text[start:end]`` touches."""
    if not offsets:
        return []
    first = max(bisect.bisect_right(offsets, start), 1)
    last = max(bisect.bisect_right(offsets, max(end - 1, start)), 1)
    return list(range(first, last + 1))


def _break(text: str, low: int, high: int) -> int:
    """The best place to end a piece within ``text[low:high]``, or ``high``."""
    window = text[low:high]
    for pattern in (_PARAGRAPH, _SENTENCE, _SPACE):
        found = [m.end() if pattern is not _SPACE else m.start() for m in pattern.finditer(window)]
        if found:
            return low + found[-1]
    return high


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def chunk_chars(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) offsets of pieces of at most ``size`` characters."""
    spans: list[tuple[int, int]] = []
    start, _ = _trim(text, 0, len(text))
    while start < len(text):
        end = len(text) if start + size >= len(text) else _break(text, start + size // 2, start + size)
        piece = _trim(text, start, end)
        if piece[1] > piece[0]:
            spans.append(piece)
        if end >= len(text):
            break
        following = max(end - overlap, start + 1)
        # start at a word: forward to the next word start, unless that loses the whole overlap
        if following > 0 and not text[following - 1].isspace():
            space = _SPACE.search(text, following, end)
            following = space.end() if space else following
        start, _ = _trim(text, following, len(text))
    return spans


def chunk_words(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) offsets of pieces of at most ``size`` words."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    spans: list[tuple[int, int]] = []
    first = 0
    while first < len(words):
        last = min(first + size, len(words)) - 1
        if last < len(words) - 1:
            # end at the last word in the second half that closes a sentence or a paragraph
            for candidate in range(last, first + size // 2 - 1, -1):
                after = text[words[candidate][1]: words[candidate + 1][0]]
                if "\n\n" in after or _SENTENCE.match(text, words[candidate][1] - 1) is not None:
                    last = candidate
                    break
        spans.append((words[first][0], words[last][1]))
        if last >= len(words) - 1:
            break
        first = max(last + 1 - overlap, first + 1)
    return spans

