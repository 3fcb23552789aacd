"""Compressed objects: decompressed as a stream before detection, and bombs refused quickly."""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import time
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import zstandard
from conftest import FLEXINGEST, Result, peak_rss_mb_of
from test_extract import DATA, extract


def test_gzip_bz2_xz_zstd_objects_are_read(tmp_path: Path, write_pipeline: Callable[..., Path],
                                           cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    pdf = (DATA / "pdflatex-outline.pdf").read_bytes()
    (folder / "outline.pdf.gz").write_bytes(gzip.compress(pdf))
    (folder / "tables.docx.bz2").write_bytes(bz2.compress((DATA / "tables.docx").read_bytes()))
    (folder / "mail.eml.xz").write_bytes(lzma.compress((DATA / "multipart.eml").read_bytes()))
    (folder / "book.epub.zst").write_bytes(zstandard.ZstdCompressor().compress(
        (DATA / "childrens-literature.epub").read_bytes()))
    (folder / "notes").write_bytes(gzip.compress("gzip found by its magic bytes\n".encode()))
    result, records = extract(tmp_path, write_pipeline, cli, folder)
    assert result.code == 0, result.stderr
    expected = {"outline.pdf.gz": ("pdf", "gzip", "Hello, here is some text"),
                "tables.docx.bz2": ("docx", "bzip2", "Top left\tTop right"),
                "mail.eml.xz": ("eml", "xz", "please see attached"),
                "book.epub.zst": ("epub", "zstd", "FAIRY STORIES"),
                "notes": ("text", "gzip", "gzip found by its magic bytes")}
    for key, (kind, compression, words) in expected.items():
        r = records[key]
        assert (r["metadata"]["type"], r["metadata"]["compression"]) == (kind, compression), key
        assert words in r["text"], key
    assert records["outline.pdf.gz"]["metadata"]["pages"] == 4


def test_corrupt_compressed_data_fails_clearly(tmp_path: Path, write_pipeline: Callable[..., Path],
                                               cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    data = gzip.compress(b"some words " * 10_000)
    (folder / "cut.txt.gz").write_bytes(data[: len(data) // 2])
    result, records = extract(tmp_path, write_pipeline, cli, folder)
    assert result.code == 1
    assert "cut.txt.gz failed: corrupt gzip data" in result.stderr and "will not change on retry" in result.stderr


def gzip_bomb(path: Path, mebibytes: int) -> None:
    """``mebibytes`` MiB of zeros, gzip-compressed (about 1,000:1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    with open(path, "wb") as out:
        for _ in range(mebibytes):
            out.write(compressor.compress(block))
        out.write(compressor.flush())


def test_a_gzip_bomb_is_refused_quickly_with_bounded_memory(tmp_path: Path,
                                                            write_pipeline: Callable[..., Path]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    gzip_bomb(folder / "bomb.txt.gz", 320)  # 320 MiB of zeros in about 320 KiB
    assert (folder / "bomb.txt.gz").stat().st_size < 2 * 1024 * 1024
    path = write_pipeline({"name": "docs", "type": "local", "config": {"path": str(folder)}},
                          steps=[{"extract_text": {}}], syncs=[{"name": "docs", "connector": "docs"}])
    started = time.monotonic()
    peak_mib, result = peak_rss_mb_of([FLEXINGEST, "run", str(path), "--once"])  # this command's own peak
    elapsed = time.monotonic() - started
    assert result.code == 1
    assert "bomb.txt.gz failed: gzip object decompresses to more than max_decompressed (268435456 bytes): " \
           "refused as a possible decompression bomb" in result.stderr
    assert elapsed < 30
    assert peak_mib < 250, f"the bomb was held in memory: {peak_mib:.0f} MiB"


def test_a_zip_bomb_document_is_refused_before_decompressing(tmp_path: Path, write_pipeline: Callable[..., Path],
                                                             cli: Callable[..., Result]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DATA / "tables.docx", folder / "bomb.docx")
    with zipfile.ZipFile(folder / "bomb.docx", "a", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("word/media/huge.bin", "w") as member:
            for _ in range(64):
                member.write(bytes(1 << 20))
    started = time.monotonic()
    result, records = extract(tmp_path, write_pipeline, cli, folder)
    assert result.code == 1
    assert "bomb.docx failed: DOCX member 'word/media/huge.bin' expands" in result.stderr
    assert "refused as a zip bomb" in result.stderr
    assert time.monotonic() - started < 10
