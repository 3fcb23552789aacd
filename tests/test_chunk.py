"""chunk: overlapping pieces of the text, at paragraph and sentence ends, with offsets and pages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
from conftest import Result
from hypothesis import given, settings
from hypothesis import strategies as st
from test_extract import DATA

from flexingest.steps.chunk import chunk_chars, chunk_words, pages

TEXT = ("The first paragraph has two sentences. It ends here.\n\n"
        "The second paragraph is a little longer than the first one, and it has three sentences. "
        "This is the second. And this is the third!\n\n"
        "A last short paragraph.")


def test_pieces_end_at_paragraphs_then_sentences() -> None:
    spans = chunk_chars(TEXT, 80, 20)
    texts = [TEXT[a:b] for a, b in spans]
    assert texts[0] == "The first paragraph has two sentences. It ends here.", "at the paragraph's end"
    assert texts[2].endswith("three sentences. This is the second."), "at a sentence's end"
    assert all(len(t) <= 80 for t in texts)
    assert all(b == len(TEXT) or TEXT[b].isspace() for _, b in spans), "a piece ends at a word end"
    assert texts[-1].endswith("A last short paragraph.")
    for (_, b1), (a2, _) in zip(spans, spans[1:]):
        assert a2 < b1 or TEXT[b1:a2].strip() == "", "consecutive pieces overlap or touch"
        assert a2 == 0 or TEXT[a2 - 1].isspace(), "a piece starts at a word"


def test_words_unit_counts_words() -> None:
    spans = chunk_words(TEXT, 12, 3)
    for a, b in spans:
        assert len(TEXT[a:b].split()) <= 12
    assert TEXT[spans[0][0]:spans[0][1]] == "The first paragraph has two sentences. It ends here."
    second = TEXT[spans[1][0]:spans[1][1]].split()
    assert second[:3] != TEXT[spans[0][0]:spans[0][1]].split()[-3:] or len(spans) > 1


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab .\n"), max_size=600), st.integers(1, 80), st.integers(0, 79))
def test_chars_cover_the_text_in_bounded_pieces(text: str, size: int, overlap: int) -> None:
    overlap = min(overlap, size - 1)
    spans = chunk_chars(text, size, overlap)
    covered = set()
    for a, b in spans:
        assert 0 <= a < b <= len(text) and b - a <= size
        assert not text[a].isspace() and not text[b - 1].isspace()
        covered.update(range(a, b))
    assert all(i in covered for i, c in enumerate(text) if not c.isspace()), "no word is lost"


def test_page_numbers_from_offsets() -> None:
    assert pages([0, 100, 250], 90, 120) == [1, 2]
    assert pages([0, 100, 250], 260, 300) == [3]
    assert pages([], 0, 10) == []


def test_chunks_through_the_cli_carry_pages(tmp_path: Path, write_pipeline: Callable[..., Path],
                                            cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "outline.pdf").write_bytes((DATA / "pdflatex-outline.pdf").read_bytes())
    out = tmp_path / "out.jsonl"
    path = write_pipeline({"name": "docs", "type": "local", "config": {"path": str(folder)}},
                          steps=[{"extract_text": {}}, {"chunk": {"size": 300, "overlap": 40, "unit": "chars"}},
                                 {"write_jsonl": {"path": str(out)}}], syncs=[{"name": "docs", "connector": "docs"}])
    result = cli("run", path, "--once")
    assert result.code == 0, result.stderr
    record = json.loads(out.read_text())
    chunks = record["chunks"]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    offsets = record["metadata"]["page_offsets"]
    for c in chunks:
        assert record["text"][c["start"]:c["end"]] == c["text"] and len(c["text"]) <= 300
        assert c["pages"] == pages(offsets, c["start"], c["end"])
    assert chunks[0]["pages"][0] == 1 and chunks[-1]["pages"] == [4]
    assert {p for c in chunks for p in c["pages"]} == {1, 2, 3, 4}


def test_overlap_must_be_below_size(tmp_path: Path, write_pipeline: Callable[..., Path],
                                    cli: Callable[..., Result]) -> None:
    path = write_pipeline({"name": "docs", "type": "local", "config": {"path": str(tmp_path)}},
                          steps=[{"chunk": {"size": 100, "overlap": 100}}])
    result = cli("validate", path)
    assert result.code == 2
    assert "overlap (100) must be smaller than size (100)" in result.stderr


@pytest.mark.parametrize("unit", ["chars", "words"])
def test_empty_text_has_no_chunks(unit: str) -> None:
    assert (chunk_chars if unit == "chars" else chunk_words)("", 10, 2) == []
