"""OCR with the real tesseract: images and image-only PDF pages rendered here from a text PDF."""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import pypdfium2 as pdfium
from conftest import Result, children_of, run_flexingest
from PIL import Image
from test_extract import DATA, extract

# Words of page 2 of pdflatex-outline.pdf ("1 Foo / Hello, here is some text without a meaning ...")
WORDS = ("Hello", "without", "meaning", "printed", "information")


def rendered_page(number: int = 2, dpi: int = 200) -> Image.Image:
    document = pdfium.PdfDocument(str(DATA / "pdflatex-outline.pdf"))
    image = document[number - 1].render(scale=dpi / 72, grayscale=True).to_pil()
    document.close()
    return image


def scanned_pdf(path: Path) -> None:
    """A two-page PDF: a page with a text layer (metadata.pdf), then a page that is only an image."""
    buffer = io.BytesIO()
    rendered_page().save(buffer, "PDF", resolution=200)
    scan = pdfium.PdfDocument(buffer.getvalue())
    merged = pdfium.PdfDocument(str(DATA / "metadata.pdf"))
    merged.import_pages(scan)
    merged.save(str(path))


def test_image_text_is_read_by_ocr(tmp_path: Path, write_pipeline: Callable[..., Path],
                                   cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rendered_page().save(folder / "scan.png")
    rendered_page().convert("RGB").save(folder / "photo.jpeg", quality=90)
    result, records = extract(tmp_path, write_pipeline, cli, folder)  # ocr: auto, tesseract being installed
    assert result.code == 0, result.stderr
    for key in ("scan.png", "photo.jpeg"):
        r = records[key]
        assert all(word in r["text"] for word in WORDS), (key, r["text"])
        assert r["metadata"]["type"] == "image" and r["metadata"]["ocr_pages"] == [1]


def test_pdf_pages_without_text_are_ocred_and_named(tmp_path: Path, write_pipeline: Callable[..., Path],
                                                     cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    scanned_pdf(folder / "scanned.pdf")
    result, records = extract(tmp_path, write_pipeline, cli, folder, {"ocr": "auto", "ocr_languages": "eng"})
    assert result.code == 0, result.stderr
    r = records["scanned.pdf"]
    assert r["metadata"]["pages"] == 2 and r["metadata"]["ocr_pages"] == [2], "only the page without text"
    first, second = r["text"][: r["metadata"]["page_offsets"][1]], r["text"][r["metadata"]["page_offsets"][1]:]
    assert first.startswith("Whatever")
    assert all(word in second for word in WORDS), second

    shutil.rmtree(tmp_path / ".flexingest")
    (tmp_path / "records.jsonl").unlink()
    result, records = extract(tmp_path, write_pipeline, cli, folder, {"ocr": "never"})
    assert result.code == 0, result.stderr
    assert "ocr_pages" not in records["scanned.pdf"]["metadata"]
    assert "Hello" not in records["scanned.pdf"]["text"]


def test_ocr_always_without_tesseract_is_a_clear_error(tmp_path: Path, write_pipeline: Callable[..., Path]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("words")
    path = write_pipeline({"name": "docs", "type": "local", "config": {"path": str(folder)}},
                          steps=[{"extract_text": {"ocr": "always"}}], syncs=[{"name": "docs", "connector": "docs"}])
    result = run_flexingest("run", path, "--once", env={"PATH": str(Path(sys.executable).parent)})
    assert result.code == 1
    assert "extract_text has ocr: always, but the tesseract program is not installed " \
           "(on Debian or Ubuntu: apt-get install tesseract-ocr)" in result.stderr


def test_unknown_ocr_language_is_a_clear_error(tmp_path: Path, write_pipeline: Callable[..., Path],
                                               cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    result, _ = extract(tmp_path, write_pipeline, cli, folder, {"ocr_languages": "eng+qqq"})
    assert result.code == 1
    assert "ocr_languages names qqq, which tesseract does not have" in result.stderr
    assert "apt-get install tesseract-ocr-qqq" in result.stderr


def test_ocr_past_its_timeout_is_killed(tmp_path: Path, write_pipeline: Callable[..., Path],
                                        cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rendered_page(dpi=300).save(folder / "scan.png")
    result, records = extract(tmp_path, write_pipeline, cli, folder, {"ocr_timeout": "50ms"})
    assert result.code == 1
    assert "scan.png failed: OCR timed out after 0.05s (ocr_timeout)" in result.stderr
    assert [pid for pid, name in children_of(os.getpid()) if name == "tesseract"] == []
    assert records == {}


def test_a_blank_image_gives_empty_text(tmp_path: Path, write_pipeline: Callable[..., Path],
                                 cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("L", (400, 200), 255).save(folder / "blank.tiff")
    result, records = extract(tmp_path, write_pipeline, cli, folder)
    assert result.code == 0, result.stderr
    metadata: dict[str, Any] = records["blank.tiff"]["metadata"]
    assert metadata["type"] == "image"
    assert records["blank.tiff"]["text"] == "" and metadata["ocr_pages"] == [1]
