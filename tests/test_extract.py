"""extract_text on the sample documents, and on what it must refuse or cut."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import Result

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "examples" / "documents"


def extract(tmp_path: Path, write_pipeline: Callable[..., Path], cli: Callable[..., Result], folder: Path,
            options: dict[str, Any] | None = None) -> tuple[Result, dict[str, dict[str, Any]]]:
    out = tmp_path / "records.jsonl"
    path = write_pipeline({"name": "docs", "type": "local", "config": {"path": str(folder)}},
                          steps=[{"extract_text": options or {}}, {"write_jsonl": {"path": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs"}])
    result = cli("run", path, "--once")
    records = {}
    if out.exists():
        for line in out.read_text().splitlines():
            record = json.loads(line)
            records[record["key"]] = record
    return result, records


@pytest.fixture
def sample_records(tmp_path: Path, write_pipeline: Callable[..., Path],
                   cli: Callable[..., Result]) -> dict[str, dict[str, Any]]:
    result, records = extract(tmp_path, write_pipeline, cli, DOCS)
    assert result.code == 0, result.stderr
    return records


def test_pdf(sample_records: dict[str, dict[str, Any]]) -> None:
    r = sample_records["contracts/service-agreement.pdf"]
    offsets = r["metadata"]["page_offsets"]
    pages = [r["text"][a:b] for a, b in zip(offsets, offsets[1:] + [len(r["text"])])]
    assert "indemnification" in pages[0] and "termination" in pages[1].lower()
    assert "Harbor Logistics" in r["text"] and "indemnification" in r["text"]
    assert "termination" in r["text"].lower()
    assert r["text"].index("indemnification") < r["text"].index("termination"), "pages in order"
    assert len(pages) >= 2
    wanted = {"type": "pdf", "pages": 2, "title": "Service Agreement"}
    assert {k: r["metadata"][k] for k in wanted} == wanted


def test_docx_paragraphs_and_tables(sample_records: dict[str, dict[str, Any]]) -> None:
    r = sample_records["contracts/amendment-2026.docx"]
    assert "amendment" in r["text"] and "Harbor Logistics" in r["text"]
    assert "Annual renewal fee" in r["text"]
    assert r["metadata"]["type"] == "docx"
    assert r["metadata"]["title"] == "Contract Amendment 2026"


def test_html_text_without_scripts_or_styles(sample_records: dict[str, dict[str, Any]]) -> None:
    r = sample_records["reports/quarterly-report.html"]
    assert "shipments increased" in r["text"] and "Rotterdam" in r["text"]
    for noise in ("trackingPixel", "dataLayer", "font-family", "<p>"):
        assert noise not in r["text"]
    assert r["metadata"]["title"] == "Quarterly Report"
    assert "—" in r["text"], "entities are decoded"


def test_text_markdown_csv_json(sample_records: dict[str, dict[str, Any]]) -> None:
    assert "Zürich" in sample_records["notes/readme.txt"]["text"]
    assert "café" in sample_records["notes/readme.txt"]["text"]
    assert "action items" in sample_records["notes/meeting-notes.md"]["text"]
    csv = sample_records["data/shipments.csv"]
    assert csv["metadata"]["columns"] == ["id", "origin", "destination", "weight_kg"]
    assert csv["metadata"]["rows"] == 5
    manifest = sample_records["data/manifest.json"]
    assert json.loads(manifest["text"])["carrier"] == "Harbor Logistics"
    assert "carrier" in manifest["metadata"]["keys"]


def test_every_record_has_its_identity(sample_records: dict[str, dict[str, Any]]) -> None:
    for key, r in sample_records.items():
        assert r["connector"] == "docs" and r["sync"] == "docs"
        assert r["size"] == (DOCS / key).stat().st_size
        assert r["version"].endswith(f"-{r['size']}")
        assert r["modified"].endswith("Z")


def test_unsupported_type_fails_or_is_skipped(tmp_path: Path, write_pipeline: Callable[..., Path],
                                              cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (folder / "note.txt").write_text("plain words")
    result, records = extract(tmp_path, write_pipeline, cli, folder, {"ocr": "never"})
    assert result.code == 1
    assert "unsupported type for extract_text: 'photo.jpg' is an image, whose text needs OCR" in result.stderr
    assert "it will not change on retry" in result.stderr
    assert list(records) == ["note.txt"]

    shutil.rmtree(tmp_path / ".flexingest")
    (tmp_path / "records.jsonl").unlink()
    result, records = extract(tmp_path, write_pipeline, cli, folder, {"on_unsupported": "skip", "ocr": "never"})
    assert result.code == 0, result.stderr
    assert list(records) == ["note.txt"], "a skipped object runs no further step"
    status = json.loads(cli("status", tmp_path / "pipeline.yaml", "--json").stdout)
    assert (status["syncs"]["docs"]["done"], status["syncs"]["docs"]["skipped"]) == (1, 1)
    again = extract(tmp_path, write_pipeline, cli, folder, {"on_unsupported": "skip"})[0]
    assert "listed 2, new 0" in again.stderr, "a skipped object is not looked at again until it changes"


def test_type_from_content_when_the_key_has_no_extension(tmp_path: Path, write_pipeline: Callable[..., Path],
                                                         cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DOCS / "contracts/service-agreement.pdf", folder / "scan-0001")
    (folder / "page").write_text("<!DOCTYPE html><html><body><p>hello there</p></body></html>")
    (folder / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    result, records = extract(tmp_path, write_pipeline, cli, folder)
    assert result.code == 0, result.stderr
    assert records["scan-0001"]["metadata"]["type"] == "pdf"
    assert records["page"]["text"] == "hello there"
    assert records["latin1.txt"]["text"] == "café crème"
    assert records["latin1.txt"]["metadata"]["encoding"] == "windows-1252"


def test_long_text_is_cut_at_max_chars(tmp_path: Path, write_pipeline: Callable[..., Path],
                                       cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "big.txt").write_text("word " * 200_000)
    result, records = extract(tmp_path, write_pipeline, cli, folder, {"max_chars": 1000})
    assert result.code == 0
    assert len(records["big.txt"]["text"]) == 1000
    assert records["big.txt"]["metadata"]["truncated"] is True


def test_broken_pdf_fails_clearly(tmp_path: Path, write_pipeline: Callable[..., Path],
                                  cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7\nthis is not really a pdf\n")
    result, records = extract(tmp_path, write_pipeline, cli, folder)
    assert result.code == 1
    assert "broken.pdf failed: cannot read PDF" in result.stderr
    assert "will not change on retry" in result.stderr
    assert records == {}


# ============================================================================================
# One real file per format (tests/data/README.md says where each comes from), through the CLI
# ============================================================================================

DATA = ROOT / "tests" / "data"


@pytest.fixture
def data_records(tmp_path: Path, write_pipeline: Callable[..., Path],
                 cli: Callable[..., Result]) -> dict[str, dict[str, Any]]:
    folder = tmp_path / "in"
    folder.mkdir()
    for path in DATA.iterdir():
        if path.suffix not in (".tar", ".md") and path.name != "libreoffice-writer-password.pdf" \
                and path.name != "encrypted.xlsx":
            shutil.copy(path, folder / path.name)
    result, records = extract(tmp_path, write_pipeline, cli, folder)
    assert result.code == 0, result.stderr
    return records


def page(record: dict[str, Any], number: int) -> str:
    offsets = record["metadata"]["page_offsets"]
    ends = offsets[1:] + [len(record["text"])]
    return str(record["text"][offsets[number - 1]:ends[number - 1]]).rstrip("\n")


def test_pdf_pages_in_order_and_metadata(data_records: dict[str, dict[str, Any]]) -> None:
    r = data_records["pdflatex-outline.pdf"]
    assert r["metadata"]["pages"] == 4 and len(r["metadata"]["page_offsets"]) == 4
    assert page(r, 1).startswith("Contents")
    assert "Hello, here is some text without a meaning" in page(r, 2)
    assert r["metadata"]["created"] == "2022-04-06T20:15:41+02:00"
    m = data_records["metadata.pdf"]["metadata"]
    assert {k: m[k] for k in ("title", "author", "subject", "created", "modified")} == {
        "title": "The Title", "author": "Martin Thoma", "subject": "The Subject",
        "created": "2022-04-15T09:32:43+02:00", "modified": "2022-04-15T09:32:43+02:00"}


def test_pdf_ligatures_are_spelled_out(data_records: dict[str, dict[str, Any]]) -> None:
    # pypdf gave "di\ufb00erently" for this XeTeX file (issue 10)
    text = data_records["crazyones.pdf"]["text"]
    assert "differently" in text
    assert not any("\ufb00" <= c <= "\ufb4f" for c in text)


def test_no_nul_or_control_characters_in_records(data_records: dict[str, dict[str, Any]]) -> None:
    # imagemagick writes its PDF titles NUL-terminated; pypdf passed the NUL into the record (issue 10)
    assert data_records["imagemagick-images.pdf"]["metadata"]["title"] == "imagemagick-images"
    for key, r in data_records.items():
        dumped = json.dumps(r, ensure_ascii=False)
        assert "\\u0000" not in dumped and "\x00" not in dumped, key
        assert not any(ord(c) < 32 and c not in "\n\t" for c in r["text"]), key


def test_docx_headers_footers_footnotes_tables_and_properties(data_records: dict[str, dict[str, Any]]) -> None:
    r = data_records["hdr-header-footer.docx"]
    assert "section with header" in r["text"]
    assert "Header for section-1" in r["text"] and "Footer for section 1" in r["text"]
    assert r["metadata"]["author"] == "Steve Canny"
    notes = data_records["footnotes.docx"]
    assert "Ouch." in notes["text"] and "A tachyon walks into a bar." in notes["text"]
    assert notes["metadata"]["footnotes"] is True
    assert "Top left\tTop right\nBottom left\tBottom right" in data_records["tables.docx"]["text"]
    core = data_records["doc-coreprops.docx"]["metadata"]
    assert (core["title"], core["subject"], core["keywords"], core["created"]) == (
        "Title", "Subject", "key; word; keyword", "2014-12-13T22:02:00Z")


def test_xlsx_sheets_rows_and_values_not_formulas(data_records: dict[str, dict[str, Any]]) -> None:
    r = data_records["ranges.xlsx"]
    assert r["metadata"]["sheets"] == ["ClickThroughRateSheet", "Sheet2"]
    first = page(r, 1)
    assert first.startswith("ClickThroughRateSheet\n") and "\tClicks\tImpressions\tCTR" in first
    assert "\t937\t965560" in first
    assert "=" not in r["text"], "cell values, never formulas (the CTR column is =B3/C3 ...)"
    assert page(r, 2).startswith("Sheet2")


def test_pptx_slides_and_notes(data_records: dict[str, dict[str, Any]]) -> None:
    r = data_records["ph-inherit-props.pptx"]
    assert r["metadata"]["slides"] == 2 and r["metadata"]["notes"] == 2
    assert page(r, 1) == "Title Text\nBody Text\n\nNotes in inherited position and size."
    assert page(r, 2) == "Notes in modified position and size."
    table = data_records["tbl-cell.pptx"]
    assert "unladen swallows" in page(table, 1) and "merged cell" in page(table, 2)


def test_odf_text_sheets_and_slides(data_records: dict[str, dict[str, Any]]) -> None:
    odt = data_records["headerfooter.odt"]
    assert odt["text"].startswith("Lorem ipsum") and "Header" in odt["text"] and "Bottom" in odt["text"]
    assert odt["metadata"]["author"] == "Søren Roug"
    ods = data_records["pythagoras.ods"]
    assert ods["metadata"]["sheets"] == ["Sheet1", "Sheet2", "Sheet3"]
    assert page(ods, 1) == "Sheet1\n3\n4\n5\n7", "shown values: 5 is SQRT(A1²+A2²), 7 is SUM(A1:A2)"
    odp = data_records["ol.odp"]
    assert odp["metadata"]["slides"] == 1 and "Tsvey" in odp["text"] and "fertsn" in odp["text"]


def test_epub_chapters_and_metadata(data_records: dict[str, dict[str, Any]]) -> None:
    r = data_records["childrens-literature.epub"]
    assert r["metadata"]["title"] == "Children's Literature"
    assert r["metadata"]["authors"] == ["Charles Madison Curry", "Erle Elsworth Clippinger"]
    assert r["metadata"]["chapters"] == len(r["metadata"]["page_offsets"]) >= 2
    assert "FAIRY STORIES" in r["text"] and "<p" not in r["text"]


def test_eml_headers_body_and_attachments(data_records: dict[str, dict[str, Any]]) -> None:
    r = data_records["multipart.eml"]
    assert r["text"] == "please see attached"
    m = r["metadata"]
    assert (m["from"], m["to"], m["subject"], m["date"]) == (
        "Foo Bar <foo.bar@example.com>", "foo.bar@example.com", "Multi-part boundary", "2018-04-29T14:05:09-04:00")
    assert m["attachments"] == [{"name": "tired_boot.FJ010019.jpeg", "content_type": "image/jpeg", "size": 10442}]
    html_mail = data_records["sample.eml"]
    assert html_mail["text"].startswith("Lorem ipsum dolor sit amet") and "=\n" not in html_mail["text"]
    assert html_mail["metadata"]["attachments"][0]["name"] == "nodejs.png"


def test_rtf_and_xml_give_text_not_markup(data_records: dict[str, dict[str, Any]]) -> None:
    # before issue 10 both came through as raw markup
    rtf = data_records["sample.rtf"]
    assert "Font size 12, bold text." in rtf["text"]
    assert "árvíztűrő ütvefúrógép" in rtf["text"], "\\'hh escapes in the document's code page"
    assert "\\" not in rtf["text"] and "panose" not in rtf["text"] and "Times New Roman Cyr" not in rtf["text"]
    assert rtf["metadata"]["title"] == "It is an example test rtf-file to RTF2XML bean for testing"
    assert rtf["metadata"]["author"] == "kissj"
    xml = data_records["test.xml"]
    assert "Introduction to XSL" in xml["text"] and "<" not in xml["text"]
    assert xml["metadata"]["xml_root"] == "HTML" and xml["metadata"]["encoding"] == "iso-8859-1"


def test_markdown_front_matter_is_metadata(tmp_path: Path, write_pipeline: Callable[..., Path],
                                          cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "post.md").write_text("---\ntitle: Shipping rates\ntags: [freight, 2026]\ndate: 2026-04-01\n---\n"
                                    "# Rates\n\nRotterdam to Leeds.\n")
    result, records = extract(tmp_path, write_pipeline, cli, folder)
    assert result.code == 0, result.stderr
    r = records["post.md"]
    assert r["text"] == "# Rates\n\nRotterdam to Leeds.\n"
    assert r["metadata"]["front_matter"] == {"title": "Shipping rates", "tags": ["freight", 2026], "date": "2026-04-01"}
    assert r["metadata"]["title"] == "Shipping rates"


def test_type_comes_from_content_before_the_extension(tmp_path: Path, write_pipeline: Callable[..., Path],
                                                      cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DATA / "metadata.pdf", folder / "blob.bin")
    shutil.copy(DATA / "tables.docx", folder / "report.pdf")
    (folder / "page.pdf").write_text("<!DOCTYPE html><html><head><title>T</title></head><body><p>not a pdf</p></body>")
    result, records = extract(tmp_path, write_pipeline, cli, folder)
    assert result.code == 0, result.stderr
    assert records["blob.bin"]["metadata"]["type"] == "pdf" and records["blob.bin"]["metadata"]["title"] == "The Title"
    assert records["report.pdf"]["metadata"]["type"] == "docx"
    assert records["page.pdf"]["metadata"]["type"] == "html" and records["page.pdf"]["text"] == "not a pdf"


def test_utf16_without_bom_and_boms_under_any_extension(tmp_path: Path, write_pipeline: Callable[..., Path],
                                                        cli: Callable[..., Result]) -> None:
    # before issue 10: UTF-16 without a BOM and a BOM under .xml/.dat were refused or read as junk
    folder = tmp_path / "in"
    folder.mkdir()
    words = "Grüße aus Zürich: Lieferung 42 ist angekommen.\n"
    (folder / "le.txt").write_bytes(words.encode("utf-16-le"))
    (folder / "be.txt").write_bytes(words.encode("utf-16-be"))
    xml = '<?xml version="1.0"?><note><to>Tove</to></note>'
    (folder / "bom.xml").write_bytes(b"\xff\xfe" + xml.encode("utf-16-le"))
    (folder / "bom.dat").write_bytes(b"\xef\xbb\xbf" + words.encode())
    (folder / "utf32.txt").write_bytes(words.encode("utf-32"))
    result, records = extract(tmp_path, write_pipeline, cli, folder)
    assert result.code == 0, result.stderr
    for key, encoding in (("le.txt", "utf-16-le"), ("be.txt", "utf-16-be"), ("bom.dat", "utf-8"),
                          ("utf32.txt", "utf-32")):
        assert records[key]["text"] == words, key
        assert records[key]["metadata"]["encoding"] == encoding, key
    assert records["bom.xml"]["text"] == "Tove" and records["bom.xml"]["metadata"]["type"] == "xml"


def test_undecodable_text_fails_clearly(tmp_path: Path, write_pipeline: Callable[..., Path],
                                        cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "junk.txt").write_bytes(b"header\x00\x01\x02\x03" + bytes(range(256)) * 8)
    result, records = extract(tmp_path, write_pipeline, cli, folder)
    assert result.code == 1
    assert "junk.txt failed: not text:" in result.stderr and "will not change on retry" in result.stderr
    assert records == {}


def test_encrypted_pdf_needs_its_password(tmp_path: Path, write_pipeline: Callable[..., Path],
                                          cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DATA / "libreoffice-writer-password.pdf", folder / "locked.pdf")
    shutil.copy(DATA / "encrypted.xlsx", folder / "locked.xlsx")
    result, records = extract(tmp_path, write_pipeline, cli, folder)
    assert result.code == 1
    assert "locked.pdf failed: the PDF is encrypted with a password: give it as the step option `password`" \
        in result.stderr
    assert "locked.xlsx failed: unsupported type for extract_text: 'locked.xlsx' is a legacy binary Office " \
           "file (.doc/.xls/.ppt) or an encrypted Office document" in result.stderr
    shutil.rmtree(tmp_path / ".flexingest")
    (folder / "locked.xlsx").unlink()
    result, records = extract(tmp_path, write_pipeline, cli, folder, {"password": "wrong"})
    assert "the step's `password` does not open it" in result.stderr
    shutil.rmtree(tmp_path / ".flexingest")
    result, records = extract(tmp_path, write_pipeline, cli, folder, {"password": "openpassword"})
    assert result.code == 0, result.stderr
    assert records["locked.pdf"]["text"].startswith("Lorem ipsum dolor sit amet")
    assert records["locked.pdf"]["metadata"]["encrypted"] is True


def test_corrupt_office_files_fail_clearly(tmp_path: Path, write_pipeline: Callable[..., Path],
                                           cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    data = (DATA / "tables.docx").read_bytes()
    (folder / "cut.docx").write_bytes(data[: len(data) // 2])
    (folder / "cut.epub").write_bytes((DATA / "childrens-literature.epub").read_bytes()[:5000])
    result, records = extract(tmp_path, write_pipeline, cli, folder)
    assert result.code == 1
    assert "cut.docx failed: unsupported type" in result.stderr or "cut.docx failed: cannot read" in result.stderr
    assert "cut.epub failed:" in result.stderr
    assert records == {}


def test_pdf_text_has_the_words_pdftotext_finds() -> None:
    from flexingest.extract import Settings
    from flexingest.extract import extract as extract_object

    for name in ("pdflatex-outline.pdf", "crazyones.pdf", "metadata.pdf"):
        reference = subprocess.run(["pdftotext", "-enc", "UTF-8", str(DATA / name), "-"], capture_output=True,
                                   check=True).stdout.decode()
        ours = extract_object(io.BytesIO((DATA / name).read_bytes()), name, Settings()).text
        words = re.findall(r"\w+", unicodedata.normalize("NFKC", reference))
        found = set(re.findall(r"\w+", ours))
        share = sum(1 for w in words if w in found) / len(words)
        assert share > 0.97, (name, share)


@pytest.mark.parametrize(("module", "name", "data"), [
    ("striprtf", "x.rtf", (DATA / "sample.rtf").read_bytes()),
    ("zstandard", "x.txt.zst", b"\x28\xb5\x2f\xfd" + bytes(16)),
])
def test_a_missing_optional_library_names_the_install(module: str, name: str, data: bytes, tmp_path: Path) -> None:
    (tmp_path / name).write_bytes(data)
    probe = (f"import sys; sys.modules[{module!r}] = None; sys.modules[{module + '.striprtf'!r}] = None\n"
             "from flexingest.extract import Settings, extract\n"
             f"try:\n    extract(open({str(tmp_path / name)!r}, 'rb'), {name!r}, Settings())\n"
             "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith(f"needs the {module} package: pip install 'flexingest[documents]'"), out
    assert out.startswith("StepError ")


def test_validate_and_help_import_no_format_library(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("version: 1\nconnectors:\n  - {name: docs, type: local, config: {path: .}}\n"
                        "steps: [unpack, {extract_text: {ocr: never}}, chunk]\n")
    probe = ("import sys\nfrom click.testing import CliRunner\nfrom flexingest.cli import cli\n"
             f"assert CliRunner().invoke(cli, ['validate', {str(pipeline)!r}]).exit_code == 0\n"
             "CliRunner().invoke(cli, ['--help'])\n"
             "print(sorted(m for m in ('pypdfium2', 'striprtf', 'zstandard', 'PIL') "
             "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_page_is_blank_when_only_white_space_and_junk_are_left() -> None:
    """Which PDF pages go to OCR: nothing visible once cleaned, however long the junk."""
    from flexingest.extract import blank, clean

    for text in ("", " \n\t\x0c", "\x00\x01\x7f\ufffe" * 100, "\ud800 \n\x9f"):
        assert blank(text) and not clean(text).strip()
    for text in ("a", "\x00 \ufb01", "  .", "\x00" * 100 + "é"):
        assert not blank(text) and clean(text).strip()


def test_extraction_from_memory_and_from_a_stream_agree() -> None:
    """A small PDF is read from memory, a large one streamed: the same text either way."""
    from flexingest.extract import Settings, extract

    data = (DATA / "pdflatex-outline.pdf").read_bytes()
    settings = Settings(max_chars=10_000_000, max_bytes=1 << 30, max_decompressed=1 << 30, password=None,
                        ocr="never", ocr_languages="eng", ocr_timeout=60)

    class Stream(io.BufferedReader):  # not a BytesIO: PDFium reads it through callbacks
        pass

    from_memory = extract(io.BytesIO(data), "a.pdf", settings, size=len(data))
    streamed = extract(Stream(io.BytesIO(data)), "a.pdf", settings, size=len(data))
    assert from_memory.text == streamed.text and from_memory.text.strip()
    assert from_memory.metadata == streamed.metadata
