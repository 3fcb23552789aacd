"""unpack: one record per archive member, through the steps that follow it."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import Result, connector_for
from stores import Store
from test_extract import DATA


def run(tmp_path: Path, write_pipeline: Callable[..., Path], cli: Callable[..., Result], folder: Path,
        unpack: dict[str, Any] | None = None, after: list[Any] | None = None,
        connector: dict[str, Any] | None = None) -> tuple[Result, dict[str, dict[str, Any]]]:
    out = tmp_path / "records.jsonl"
    steps = [{"unpack": unpack or {}}, *(after if after is not None else [{"extract_text": {}}]),
             {"write_jsonl": {"path": str(out)}}]
    path = write_pipeline(connector or {"name": "docs", "type": "local", "config": {"path": str(folder)}},
                          steps=steps, syncs=[{"name": "docs", "connector": "docs"}])
    result = cli("run", path, "--once")
    records = {}
    if out.exists():
        for line in out.read_text().splitlines():
            record = json.loads(line)
            records[record["key"]] = record
    return result, records


def bundle(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(DATA / "tables.docx", "docs/tables.docx")
        zf.write(DATA / "metadata.pdf", "docs/metadata.pdf")
        zf.writestr("docs/", b"")
        zf.writestr("notes/readme.txt", "Harbor Logistics notes")


def test_each_zip_member_is_a_record(tmp_path: Path, write_pipeline: Callable[..., Path],
                                     cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    bundle(folder / "bundle.zip")
    (folder / "plain.txt").write_text("not an archive: passes through")
    result, records = run(tmp_path, write_pipeline, cli, folder)
    assert result.code == 0, result.stderr
    assert sorted(records) == ["bundle.zip!/docs/metadata.pdf", "bundle.zip!/docs/tables.docx",
                               "bundle.zip!/notes/readme.txt", "plain.txt"]
    pdf = records["bundle.zip!/docs/metadata.pdf"]
    archive_version = f"{(folder / 'bundle.zip').stat().st_mtime_ns}-{(folder / 'bundle.zip').stat().st_size}"
    assert (pdf["connector"], pdf["sync"], pdf["version"]) == ("docs", "docs", archive_version)
    assert pdf["metadata"]["archive"] == "bundle.zip" and pdf["metadata"]["member"] == "docs/metadata.pdf"
    assert pdf["metadata"]["title"] == "The Title" and pdf["size"] == (DATA / "metadata.pdf").stat().st_size
    assert "Top left\tTop right" in records["bundle.zip!/docs/tables.docx"]["text"]
    assert records["plain.txt"]["text"] == "not an archive: passes through"
    status = json.loads(cli("status", tmp_path / "pipeline.yaml", "--json").stdout)
    assert status["syncs"]["docs"]["done"] == 2, "the archive is one object of the state"


def test_tar_gz_members_with_dot_dot_fail_or_are_skipped(tmp_path: Path, write_pipeline: Callable[..., Path],
                                                         cli: Callable[..., Result]) -> None:
    work = tmp_path / "work" / "inner"
    work.mkdir(parents=True)
    (work.parent / "escape.txt").write_text("outside the archive's folder")
    (work / "inside.txt").write_text("inside words")
    folder = tmp_path / "in"
    folder.mkdir()
    # GNU tar with -P keeps the '../' of member names, as a hostile archive would
    subprocess.run(["tar", "-czPf", str(folder / "evil.tar.gz"), "-C", str(work), "inside.txt", "../escape.txt"],
                   check=True)
    assert "../escape.txt" in tarfile.open(folder / "evil.tar.gz").getnames()
    result, records = run(tmp_path, write_pipeline, cli, folder)
    assert result.code == 1
    assert "evil.tar.gz failed: unsafe member name in the archive: unsafe key '../escape.txt': has an empty, '.' " \
           "or '..' path segment" in result.stderr
    shutil.rmtree(tmp_path / ".flexingest")
    (tmp_path / "records.jsonl").unlink(missing_ok=True)
    result, records = run(tmp_path, write_pipeline, cli, folder, {"unsafe_members": "skip"})
    assert result.code == 0, result.stderr
    assert list(records) == ["evil.tar.gz!/inside.txt"]
    assert records["evil.tar.gz!/inside.txt"]["text"] == "inside words"


def test_tar_links_devices_and_odd_names_are_left_out(tmp_path: Path, write_pipeline: Callable[..., Path],
                                                      cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DATA / "testtar.tar", folder / "testtar.tar")  # CPython's tarfile test archive
    result, records = run(tmp_path, write_pipeline, cli, folder, {"unsafe_members": "skip"},
                          after=[{"extract_text": {"on_unsupported": "skip"}}])  # its sparse files are binary
    assert result.code == 0, result.stderr
    names = {key.split("!/", 1)[1] for key in records}
    assert "ustar/regtype" in names and "pax/umlauts-ÄÖÜäöüß" in names and "gnu/sparse" not in names
    for skipped in ("ustar/symtype", "ustar/lnktype", "ustar/blktype", "ustar/chrtype", "ustar/fifotype",
                    "symtype2", "ustar/linktest2/symtype", "ustar/dirtype"):
        assert skipped not in names, skipped
    assert not any("\udce4" in name or "\\" in name for name in names), "names that are not UTF-8 are skipped"
    assert records["testtar.tar!/ustar/regtype"]["text"].startswith('Foreword for "Programming Python"')


def test_bounds_refuse_bombs_and_huge_archives(tmp_path: Path, write_pipeline: Callable[..., Path],
                                               cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    with zipfile.ZipFile(folder / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("zeros.txt", "w") as member:
            for _ in range(64):
                member.write(bytes(1 << 20))
    with zipfile.ZipFile(folder / "many.zip", "w") as zf:
        for i in range(5):
            zf.writestr(f"m{i}.txt", "x")
    result, records = run(tmp_path, write_pipeline, cli, folder, {"max_members": 4})
    assert result.code == 1
    assert "bomb.zip failed: the zip archive member 'zeros.txt' expands" in result.stderr
    assert "many.zip failed: the archive has more than max_members (4) members" in result.stderr
    assert records == {}


def test_a_failing_member_fails_the_archive_and_is_named(tmp_path: Path, write_pipeline: Callable[..., Path],
                                                         cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    with zipfile.ZipFile(folder / "mixed.zip", "w") as zf:
        zf.writestr("good.txt", "fine")
        zf.writestr("broken.pdf", b"%PDF-1.7\nnot really\n")
    # an encrypted member, as the zip program writes it
    subprocess.run(["zip", "-q", "-P", "secret", str(folder / "locked.zip"), "inside.txt"],
                   cwd=_write(tmp_path / "z", "inside.txt", "secret words"), check=True)
    result, _ = run(tmp_path, write_pipeline, cli, folder)
    assert result.code == 1
    assert "mixed.zip failed: mixed.zip!/broken.pdf: cannot read PDF" in result.stderr
    assert "locked.zip failed: the zip archive is encrypted (member 'inside.txt')" in result.stderr
    status = json.loads(cli("status", tmp_path / "pipeline.yaml", "--json").stdout)
    assert status["syncs"]["docs"]["failed"] + status["syncs"]["docs"].get("dead", 0) == 2


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_unpack_extract_and_chunk_over_s3(store: Store, tmp_path: Path, write_pipeline: Callable[..., Path],
                                          cli: Callable[..., Result]) -> None:
    local = tmp_path / "zip"
    local.mkdir()
    bundle(local / "bundle.zip")
    store.put("in/bundle.zip", (local / "bundle.zip").read_bytes())
    store.put("in/outline.pdf", (DATA / "pdflatex-outline.pdf").read_bytes())
    store.put("in/book.epub", (DATA / "childrens-literature.epub").read_bytes())
    result, records = run(tmp_path, write_pipeline, cli, tmp_path,
                          after=[{"extract_text": {}}, {"chunk": {"size": 500}}], connector=connector_for(store))
    assert result.code == 0, result.stderr
    assert sorted(records) == ["in/book.epub", "in/bundle.zip!/docs/metadata.pdf", "in/bundle.zip!/docs/tables.docx",
                               "in/bundle.zip!/notes/readme.txt", "in/outline.pdf"]
    outline = records["in/outline.pdf"]
    assert outline["metadata"]["pages"] == 4
    hello = next(c for c in outline["chunks"] if "Hello, here is some text" in c["text"])
    assert 2 in hello["pages"]
    assert all(outline["text"][c["start"]:c["end"]] == c["text"] and len(c["text"]) <= 500 for c in outline["chunks"])
    assert records["in/book.epub"]["metadata"]["title"] == "Children's Literature"
