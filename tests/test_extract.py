"""extract_text on the sample documents, and on what it must refuse or cut."""

from __future__ import annotations

import json
import shutil
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
    pages = r["text"].split("\n\n")
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
    result, records = extract(tmp_path, write_pipeline, cli, folder)
    assert result.code == 1
    assert "unsupported type for extract_text: 'photo.jpg'" in result.stderr
    assert list(records) == ["note.txt"]

    shutil.rmtree(tmp_path / ".flexingest")
    (tmp_path / "records.jsonl").unlink()
    result, records = extract(tmp_path, write_pipeline, cli, folder, {"on_unsupported": "skip"})
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
    assert records["latin1.txt"]["metadata"]["encoding"] == "latin-1"


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
    assert records == {}
