"""BM-8: executors (issue 13): threads, a local process pool and a Dask cluster, measured.

Parts (``--parts``, default all):

- ``cpu``: ``extract_text`` (``ocr: never``) + ``write_json`` to a local folder over real
  multi-page PDFs (the manuals of Debian's texlive-latex-recommended-doc, and of
  texlive-science-doc when the first has fewer than ``--min-pdfs``; fetched with
  ``apt-get download`` into ``--cache``, never committed), ``flexingest run P --once`` on a
  fresh state with ``--executor threads``, ``processes:2`` and ``dask:2`` (a LocalCluster),
  against the **physical reference**: the same library (pypdfium2, every page's
  ``get_text_bounded()``, as flexingest/extract/pdf.py does) called directly in a
  ``multiprocessing.Pool(2)`` that writes one JSON file per PDF, no flexingest around it.
- ``io``: BM-3's small-object copy from moto (``--io-count`` x ``--io-size``, ``copy`` to a
  local folder, concurrency ``--io-concurrency``) with threads and ``processes:2``; moto's CPU
  per object says where the ceiling is.
- ``overhead``: ``--tiny-count`` tiny local files through a ``python`` step that returns the
  record, per executor and concurrency; a pass with ``--startup-count`` new objects and an
  unchanged pass (which must start no pool and no cluster: the process tree is checked).
- ``coordinator``: what the coordinator alone costs: listing + diff CPU per 1,000 keys
  (unchanged passes over moto and a local folder, minus an empty one) and SQLite commits per
  second (``State.record`` in batches of 1 to 500 outcomes, as the Committer does). From
  these and the per-object figures the script prints what a 10-node cluster would do.

CPU is measured for the whole process tree (pool and cluster workers included, orphans
reaped by a subreaper: see _tree.py) and, apart, for the coordinator's own process. Each
measurement is repeated ``--repeat`` times (contenders interleaved); tables show the median
and [min-max].

    .venv/bin/python benchmarks/bm8_executors.py --wait-quiet 120 --save
    .venv/bin/python benchmarks/bm8_executors.py --parts cpu --repeat 5

Targets (issue 13, on 2 cores): processes >= 1.8 x threads, Dask >= 1.7 x threads,
flexingest (processes) >= 0.9 x the reference.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import expect_counts, flexingest_argv, py_spy_profile, summary_counts, wait_quiet  # noqa: E402
from _report import Report, machine_info  # noqa: E402
from _setup import (  # noqa: E402
    PYTHON,
    REPO,
    KiB,
    base_parser,
    clean_env,
    connector_config,
    count_files,
    fill,
    int_list,
    key_name,
    log,
    make_local_files,
    new_store,
    noop_steps,
    payload,
    start_server,
    workdir,
    write_pipeline,
)
from _tree import TreeMeasurement, measure_tree, med, spread  # noqa: E402

PACKAGES = ["texlive-latex-recommended-doc", "texlive-science-doc"]
TARGET_PROCESSES = 1.8
TARGET_DASK = 1.7
TARGET_REFERENCE = 0.9
QUIET = 0.15  # a run is "quiet" when the other processes used at most this much of a core meanwhile
NODES, CORES = 10, 16
BIG = 10_000_000


# =========================================================================== the PDF corpus


def fetch_corpus(cache: Path, minimum: int, maximum: int) -> list[tuple[str, Path, int]]:
    """(key, path, pages) of real multi-page PDFs: Debian documentation packages, in order,
    until ``minimum`` are found; duplicates (same bytes) and PDFs PDFium cannot open left out."""
    import pypdfium2

    cache.mkdir(parents=True, exist_ok=True)
    found: list[tuple[str, Path, int]] = []
    seen: set[str] = set()
    for package in PACKAGES:
        if len(found) >= minimum:
            break
        tree = cache / package
        if not tree.exists():
            log(f"fetching {package} (Debian) for its PDF manuals")
            subprocess.run(["apt-get", "download", "-q", package], cwd=cache, check=True, capture_output=True)
            deb = next(cache.glob(f"{package}_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        for name in sorted(glob.glob(str(tree / "usr/share/doc/**/*.pdf"), recursive=True)):
            path = Path(name)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in seen:
                continue
            try:
                doc = pypdfium2.PdfDocument(str(path))
                pages = len(doc)
                doc.close()
            except pypdfium2.PdfiumError:
                continue
            if pages < 2:
                continue
            seen.add(digest)
            found.append((f"{package}/{path.relative_to(tree / 'usr/share/doc')}", path, pages))
    if maximum:
        found = found[:maximum]
    return found


def reference_child(listing: Path, out: Path, procs: int) -> None:
    """The physical reference: pypdfium2 directly, ``procs`` processes, one JSON file per PDF."""
    import multiprocessing

    jobs = [(line.split("\t")[0], line.split("\t")[1], str(out)) for line in listing.read_text().splitlines()]
    with multiprocessing.Pool(procs) as pool:
        pages = sum(pool.imap_unordered(_reference_one, jobs, chunksize=1))
        pool.close()
        pool.join()
    print(json.dumps({"documents": len(jobs), "pages": pages}))


def _reference_one(job: tuple[str, str, str]) -> int:
    import pypdfium2 as pdfium

    key, path, out = job
    doc = pdfium.PdfDocument(path)
    texts = []
    try:
        for index in range(len(doc)):
            page = doc[index]
            textpage = page.get_textpage()
            texts.append(textpage.get_text_bounded())
            textpage.close()
            page.close()
    finally:
        doc.close()
    target = os.path.join(out, hashlib.sha1(key.encode()).hexdigest() + ".json")
    with open(target, "w") as f:
        json.dump({"key": key, "text": "\n\n".join(texts), "pages": len(texts)}, f)
    return len(texts)


# =========================================================================== helpers


def fresh(pipeline: Path, *outputs: Path) -> None:
    """No state file, no outputs: the next pass is a first pass."""
    for leftover in (pipeline.parent / ".flexingest").glob(f"{pipeline.stem}.db*"):
        leftover.unlink()
    for out in outputs:
        shutil.rmtree(out, ignore_errors=True)


def flex_env(work: Path) -> dict[str, str]:
    tmp = work / "dask-tmp"
    tmp.mkdir(exist_ok=True)
    return clean_env(DASK_TEMPORARY_DIRECTORY=str(tmp), OMP_THREAD_LIMIT="1")


def run(label: str, pipeline: Path, executor: str | None, work: Path, *, server: Any = None,
        timeout: float = 900, want: dict[str, int] | None = None) -> TreeMeasurement:
    argv = flexingest_argv("run", pipeline, "--once", *(["--executor", executor] if executor else []))
    m = measure_tree(label, argv, env=flex_env(work), cwd=pipeline.parent, server=server, timeout=timeout)
    if want:
        expect_counts(m, **want)  # type: ignore[arg-type]
    return m


def rows_of(runs: dict[str, list[TreeMeasurement]], label: str) -> list[TreeMeasurement]:
    return runs.setdefault(label, [])


def cell(runs: list[TreeMeasurement], fn: Callable[[TreeMeasurement], float], fmt: str = "{:.2f}") -> str:
    return spread([fn(m) for m in runs], fmt)


def roles_line(runs: list[TreeMeasurement]) -> str:
    names = sorted({name for m in runs for name in m.roles})
    parts = [f"{name} {med([m.roles.get(name, 0.0) for m in runs]):.2f} s" for name in names]
    procs = sorted({m.processes for m in runs})
    return (", ".join(parts) or "none") + f"; processes started: {','.join(map(str, procs))}"


# =========================================================================== parts


def part_cpu(args: Any, work: Path, report: Report, results: dict[str, Any], everything: list[Any]) -> None:
    corpus = fetch_corpus(args.cache, args.min_pdfs, args.max_pdfs)
    pages = sum(p for _, _, p in corpus)
    megabytes = sum(path.stat().st_size for _, path, _ in corpus) / 1e6
    if len(corpus) < args.min_pdfs and not (args.max_pdfs and args.max_pdfs < args.min_pdfs):
        log(f"only {len(corpus)} PDFs found (wanted {args.min_pdfs})")
    log(f"PDF corpus: {len(corpus)} files, {pages} pages, {megabytes:.0f} MB")
    src = work / "pdfs"
    for key, path, _ in corpus:
        target = src / key
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
    listing = work / "pdfs.tsv"
    listing.write_text("\n".join(f"{key}\t{src / key}" for key, _, _ in corpus))
    out = work / "pdf-out"
    pipeline = write_pipeline(work, "local", {"path": str(src)}, name="cpu",
                              steps=[{"extract_text": {"ocr": "never"}}, {"write_json": {"url": str(out)}}],
                              concurrency=args.concurrency)
    contenders = [*args.executors, "reference"]
    runs: dict[str, list[TreeMeasurement]] = {}
    for r in range(args.repeat):
        for contender in contenders:
            label = f"cpu {contender} #{r + 1}"
            log(label)
            fresh(pipeline, out)
            if contender == "reference":
                out.mkdir(parents=True)
                m = measure_tree(label, [PYTHON, __file__, "--reference-child", listing, out, args.procs],
                                 env=clean_env(), cwd=work, timeout=args.timeout)
                made = count_files(out)
            else:
                m = run(label, pipeline, contender, work, timeout=args.timeout,
                        want={"listed": len(corpus), "new": len(corpus), "done": len(corpus), "failed": 0})
                made = count_files(out)
            if made != len(corpus):
                raise RuntimeError(f"{label}: {made} outputs, expected {len(corpus)}")
            rows_of(runs, contender).append(m)
            everything.append(m)
    threads = med([m.wall for m in runs["threads"]])
    reference = med([m.wall for m in runs["reference"]])
    table = []
    for contender in contenders:
        ms = runs[contender]
        wall = med([m.wall for m in ms])
        table.append((
            contender if contender != "reference" else f"reference: pypdfium2, Pool({args.procs})",
            cell(ms, lambda m: len(corpus) / m.wall, "{:.1f}"), cell(ms, lambda m: pages / m.wall, "{:.0f}"),
            cell(ms, lambda m: m.wall), cell(ms, lambda m: m.cpu), cell(ms, lambda m: m.coordinator_cpu),
            cell(ms, lambda m: m.workers_cpu), cell(ms, lambda m: 1000 * m.cpu / pages),
            cell(ms, lambda m: m.others_cpu), f"{threads / wall:.2f}x", f"{reference / wall:.2f}x"))
    report.table(f"CPU-bound: extract_text + write_json over {len(corpus)} real PDFs ({pages} pages, "
                 f"{megabytes:.0f} MB; {', '.join(PACKAGES[:2])}), concurrency {args.concurrency}, fresh state "
                 f"each run; median [min-max] of {args.repeat}",
                 ["contender", "docs/s", "pages/s", "wall s", "CPU s (tree)", "coordinator CPU s",
                  "workers CPU s", "CPU ms/page", "others CPU s", "x threads", "x reference"], table)
    quiet = {c: [m for m in runs[c] if m.others_cpu / m.wall <= QUIET] for c in contenders}
    checks = []
    for name, a, b, target in (("processes:2 vs threads", "processes:2", "threads", TARGET_PROCESSES),
                               ("processes:2 vs reference", "processes:2", "reference", TARGET_REFERENCE),
                               ("dask:2 vs threads", "dask:2", "threads", TARGET_DASK)):
        if a not in runs or b not in runs:
            continue
        ratio = med([m.wall for m in runs[b]]) / med([m.wall for m in runs[a]])
        if quiet[a] and quiet[b]:
            calm = med([m.wall for m in quiet[b]]) / med([m.wall for m in quiet[a]])
            calm_text = f"{calm:.2f}x ({len(quiet[a])} and {len(quiet[b])} runs)"
        else:
            calm, calm_text = None, "no quiet runs"
        met = calm if calm is not None else ratio
        checks.append((name, f"{ratio:.2f}x", calm_text, f">= {target}x", "yes" if met >= target else "NO"))
    report.table(f"Targets (ratios of median wall times; 'quiet runs': only the runs during which the other processes "
                 f"of the machine used at most {QUIET} of a core)",
                 ["ratio", "all runs", "quiet runs", "target", "met"], checks)
    report.emit("Each run (others: cores used meanwhile by the other processes of the machine):")
    for contender in contenders:
        report.emit(f"  {contender}: " + ", ".join(f"{m.wall:.2f} s wall / {m.cpu:.2f} s CPU / others "
                                                   f"{m.others_cpu / m.wall:.2f}" for m in runs[contender]))
    results["cpu"] = {"documents": len(corpus), "pages": pages, "runs": runs}
    report.emit("coordinator CPU s: the flexingest process's own CPU (with Dask's LocalCluster its scheduler "
                "runs in it); workers CPU s: every other process of the tree (pool processes, nannies and "
                "Dask workers, the resource tracker). Sampled CPU of the other processes, by role (medians):")
    for contender in contenders:
        report.emit(f"  {contender}: {roles_line(runs[contender])}")
    if args.profile:
        fresh(pipeline, out)
        report.emit("")
        report.emit("Profile: the processes:2 pass, coordinator and workers (py-spy --subprocesses)")
        report.emit(py_spy_profile(flexingest_argv("run", pipeline, "--once", "--executor", "processes:2"),
                                   env=flex_env(work), cwd=work, timeout=args.timeout))


def part_io(args: Any, work: Path, report: Report, results: dict[str, Any], everything: list[Any],
            server: Any) -> None:
    count, size = args.io_count, args.io_size
    store = new_store("s3", server, work)
    fill(store, ((key_name(i), payload(size, i)) for i in range(count)), count)
    results["io_store"] = store
    out = work / "io-out"
    pipeline = write_pipeline(work, "s3", connector_config(store), name="io",
                              steps=[{"copy": {"url": str(out)}}], concurrency=args.io_concurrency)
    runs: dict[str, list[TreeMeasurement]] = {}
    execs = [e for e in args.executors if not e.startswith("dask")] + args.io_extra
    for r in range(args.repeat):
        for executor in execs:
            label = f"io {executor} #{r + 1}"
            log(label)
            fresh(pipeline, out)
            m = run(label, pipeline, executor, work, server=server, timeout=args.timeout,
                    want={"listed": count, "new": count, "done": count, "failed": 0})
            if count_files(out) != count:
                raise RuntimeError(f"{label}: {count_files(out)} files copied, expected {count}")
            rows_of(runs, executor).append(m)
            everything.append(m)
    threads = med([m.wall for m in runs[execs[0]]])
    table = []
    for executor in execs:
        ms = runs[executor]
        table.append((executor, cell(ms, lambda m: count / m.wall, "{:.0f}"), cell(ms, lambda m: m.wall),
                      cell(ms, lambda m: m.cpu), cell(ms, lambda m: m.coordinator_cpu),
                      cell(ms, lambda m: m.workers_cpu), cell(ms, lambda m: 1000 * m.cpu / count),
                      cell(ms, lambda m: m.server_cpu or 0.0), cell(ms, lambda m: 1000 * (m.server_cpu or 0) / count),
                      cell(ms, lambda m: (m.cpu + (m.server_cpu or 0) + m.others_cpu) / m.wall),
                      f"{threads / med([m.wall for m in ms]):.2f}x"))
    report.table(f"I/O-bound: BM-3 first pass, {count} x {size // KiB} KiB from moto, copy to a local folder, "
                 f"concurrency {args.io_concurrency}; median [min-max] of {args.repeat}",
                 ["executor", "objects/s", "wall s", "CPU s (tree)", "coordinator CPU s", "workers CPU s",
                  "CPU ms/object", "moto CPU s", "moto CPU ms/object", "cores busy (all)", "x threads"], table)
    moto = med([1000 * (m.server_cpu or 0) / count for ms in runs.values() for m in ms])
    report.emit(f"moto alone, one Python process: {moto:.2f} ms of CPU per object (its GET and its share of the "
                f"listing) puts its ceiling at ~{1000 / moto:.0f} objects/s on one whole core; 'cores busy' counts "
                f"flexingest, moto and every other process together (2 = the machine is saturated).")
    results["io"] = {"count": count, "runs": runs, "moto_ms": moto}


def part_overhead(args: Any, work: Path, report: Report, results: dict[str, Any], everything: list[Any]) -> None:
    tiny = work / "tiny"
    few = work / "few"
    make_local_files(tiny, args.tiny_count, size=16)
    make_local_files(few, args.startup_count, size=16)
    folder = work / "overhead"
    folder.mkdir(exist_ok=True)
    steps = noop_steps(folder)
    pipelines = {}
    for c in args.tiny_concurrency:
        pipelines[("tiny", c)] = write_pipeline(folder, "local", {"path": str(tiny)}, steps=steps,
                                                name=f"tiny-c{c}", concurrency=c)
    pipelines[("few", 0)] = write_pipeline(folder, "local", {"path": str(few)}, steps=steps, name="few")
    runs: dict[str, list[TreeMeasurement]] = {}
    for r in range(args.repeat):
        for executor in args.executors:
            for c in args.tiny_concurrency:
                p = pipelines[("tiny", c)]
                fresh(p)
                label = f"overhead {executor} c={c} {args.tiny_count} new #{r + 1}"
                log(label)
                m = run(label, p, executor, work, timeout=args.timeout,
                        want={"new": args.tiny_count, "done": args.tiny_count, "failed": 0})
                rows_of(runs, f"{executor}|{c}|new").append(m)
                everything.append(m)
                if c == args.tiny_concurrency[0]:
                    label = f"overhead {executor} unchanged {args.tiny_count} #{r + 1}"
                    m = run(label, p, executor, work, timeout=args.timeout,
                            want={"listed": args.tiny_count, "new": 0, "done": 0})
                    rows_of(runs, f"{executor}|unchanged").append(m)
                    everything.append(m)
            p = pipelines[("few", 0)]
            fresh(p)
            label = f"overhead {executor} {args.startup_count} new #{r + 1}"
            log(label)
            m = run(label, p, executor, work, timeout=args.timeout,
                    want={"new": args.startup_count, "done": args.startup_count})
            rows_of(runs, f"{executor}|few").append(m)
            everything.append(m)
            m = run(f"overhead {executor} unchanged {args.startup_count} #{r + 1}", p, executor, work,
                    timeout=args.timeout, want={"new": 0})
            rows_of(runs, f"{executor}|few-unchanged").append(m)
            everything.append(m)
    n = args.tiny_count
    table = []
    per_object: dict[tuple[str, int], tuple[float, float, float]] = {}
    for executor in args.executors:
        base = runs[f"{executor}|unchanged"]
        for c in args.tiny_concurrency:
            ms = runs[f"{executor}|{c}|new"]
            few_new = runs[f"{executor}|few"]
            # marginal cost of one object: (pass with n new - pass with few new) / (n - few)
            k = n - args.startup_count
            wall = (med([m.wall for m in ms]) - med([m.wall for m in few_new])) / k
            cpu = (med([m.cpu for m in ms]) - med([m.cpu for m in few_new])) / k
            coord = (med([m.coordinator_cpu for m in ms]) - med([m.coordinator_cpu for m in few_new])) / k
            per_object[(executor, c)] = (wall, cpu, coord)
            table.append((executor, c, cell(ms, lambda m: m.wall), cell(ms, lambda m: m.cpu),
                          cell(ms, lambda m: m.coordinator_cpu), cell(ms, lambda m: n / m.wall, "{:.0f}"),
                          f"{1000 * wall:.3f}", f"{1000 * cpu:.3f}", f"{1000 * coord:.3f}",
                          cell(base, lambda m: m.wall)))
    report.table(f"Overhead: {n} tiny local files (16 B) through a python step that returns the record; "
                 f"per object = (pass with {n} new - pass with {args.startup_count} new) / "
                 f"{n - args.startup_count}; median [min-max] of {args.repeat}",
                 ["executor", "conc.", "wall s", "CPU s (tree)", "coordinator CPU s", "objects/s",
                  "wall ms/object", "CPU ms/object", "coordinator CPU ms/object", f"unchanged {n}: wall s"],
                 table)
    base_threads = med([m.wall for m in runs["threads|few-unchanged"]])
    table = []
    startup: dict[str, float] = {}
    for executor in args.executors:
        new = runs[f"{executor}|few"]
        same = runs[f"{executor}|few-unchanged"]
        wall_obj = per_object[(executor, args.tiny_concurrency[0])][0]
        start = med([m.wall for m in new]) - med([m.wall for m in same]) - args.startup_count * wall_obj
        startup[executor] = start
        spawned = sorted({m.processes for m in same})
        table.append((executor, cell(new, lambda m: m.wall), cell(new, lambda m: m.cpu), cell(same, lambda m: m.wall),
                      cell(same, lambda m: m.cpu), f"{start:.2f}", ",".join(map(str, spawned)),
                      ",".join(sorted({str(m.processes) for m in new})),
                      f"{med([m.wall for m in same]) - base_threads:+.2f}"))
    report.table(f"Start-up: a pass with {args.startup_count} new objects, and an unchanged pass over them "
                 f"(as a cron pass over an unchanged bucket); median [min-max] of {args.repeat}",
                 ["executor", "50 new: wall s", "CPU s", "unchanged: wall s", "CPU s",
                  "executor start-up s (new - unchanged - 50 x per object)", "processes started (unchanged)",
                  "processes started (new)", "unchanged vs threads, wall s"], table)
    started = [m for e in args.executors for m in runs[f"{e}|unchanged"] + runs[f"{e}|few-unchanged"]
               if m.processes]
    if started:
        report.emit(f"NOT MET: unchanged passes started processes: {[m.label for m in started]}")
    else:
        report.emit("Unchanged passes started no process with any executor (the process tree was sampled every "
                    "50 ms: no pool worker, no Dask scheduler or worker): a cron pass over an unchanged bucket "
                    "starts no cluster.")
    results["overhead"] = {"per_object": per_object, "startup": startup, "runs": runs}


def part_coordinator(args: Any, work: Path, report: Report, results: dict[str, Any], everything: list[Any],
                     server: Any) -> None:
    """Listing + diff CPU per 1,000 keys, and SQLite commits per second."""
    table = []
    per_1000: dict[str, float] = {}
    cases = []
    if server is not None and "io_store" in results:
        store = results["io_store"]
        count = args.io_count
        full = write_pipeline(work, "s3", connector_config(store), name="list-s3", steps=noop_steps(work))
        empty_store = new_store("s3", server, work)
        empty = write_pipeline(work, "s3", connector_config(empty_store), name="list-s3-empty",
                               steps=noop_steps(work))
        run("list s3 first pass", full, None, work, server=server, want={"new": count})
        cases.append(("s3 (moto)", full, empty, count, server))
    local = work / "list-local"
    make_local_files(local, args.list_local, size=1)
    (work / "list-empty").mkdir(exist_ok=True)
    full = write_pipeline(work, "local", {"path": str(local)}, name="list-local", steps=noop_steps(work))
    empty = write_pipeline(work, "local", {"path": str(work / "list-empty")}, name="list-local-empty",
                           steps=noop_steps(work))
    run("list local first pass", full, None, work, want={"new": args.list_local})
    cases.append(("local", full, empty, args.list_local, None))
    for name, full, empty, count, srv in cases:
        fulls, empties = [], []
        for r in range(args.repeat):
            fulls.append(run(f"unchanged {name} {count} #{r + 1}", full, None, work, server=srv,
                             want={"listed": count, "new": 0}))
            empties.append(run(f"unchanged {name} empty #{r + 1}", empty, None, work, server=srv,
                               want={"listed": 0}))
        everything += fulls + empties
        cpu = (med([m.cpu for m in fulls]) - med([m.cpu for m in empties])) / (count / 1000)
        wall = (med([m.wall for m in fulls]) - med([m.wall for m in empties])) / (count / 1000)
        in_pass = med([summary_counts(m).get("seconds", 0.0) for m in fulls])
        per_1000[name] = cpu
        table.append((name, count, cell(fulls, lambda m: m.wall), cell(fulls, lambda m: m.cpu),
                      cell(empties, lambda m: m.cpu), f"{1000 * cpu:.1f}", f"{1000 * wall:.1f}", f"{in_pass:.2f}",
                      cell(fulls, lambda m: m.server_cpu or 0.0) if srv else "-"))
    report.table(f"Coordinator: listing + diff of an unchanged pass, per 1,000 keys = (unchanged pass over N - "
                 f"unchanged pass over an empty bucket) / (N / 1000); median [min-max] of {args.repeat}",
                 ["connector", "keys", "wall s", "CPU s", "empty: CPU s", "CPU ms per 1,000 keys",
                  "wall ms per 1,000 keys", "in-pass s", "server CPU s"], table)
    commits = sqlite_commits(work, args.repeat)
    report.table("Coordinator: SQLite commits (State.record of 'done' outcomes for new keys, one transaction "
                 f"per batch, WAL, synchronous=NORMAL, as the Committer does); median of {args.repeat}",
                 ["outcomes per commit", "commits", "commits/s", "rows/s", "CPU ms per commit", "CPU us per row"],
                 [(b, n, f"{c:,.0f}", f"{c * b:,.0f}", f"{1000 * cpu:.3f}", f"{1e6 * cpu / b:.1f}")
                  for b, n, c, cpu in commits])
    results["coordinator"] = {"per_1000": per_1000, "commits": commits}


def sqlite_commits(work: Path, repeat: int) -> list[tuple[int, int, float, float]]:
    """(batch, commits, commits/s, CPU s per commit) of State.record, in a child process."""
    out = subprocess.run([PYTHON, __file__, "--sqlite-child", str(work / "commits"), str(repeat)],
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return [tuple(x) for x in json.loads(out.stdout)]  # type: ignore[misc]


def sqlite_child(folder: Path, repeat: int) -> None:
    from flexingest.state import Outcome, State

    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for batch, commits in ((1, 1000), (10, 1000), (100, 300), (500, 100)):
        rates, cpus = [], []
        for r in range(repeat):
            path = folder / f"state-{batch}-{r}.db"
            with State(path) as state:
                serial = 0
                started, cpu0 = time.perf_counter(), time.process_time()
                for _ in range(commits):
                    outcomes = [Outcome(f"d{serial // 1000:04d}/obj-{(serial := serial + 1):07d}.bin", "v1", 4096,
                                        1.7e9, "done") for _ in range(batch)]
                    state.record("bench", outcomes, 3)
                wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
            rates.append(commits / wall)
            cpus.append(cpu / commits)
        results.append((batch, commits, med(rates), med(cpus)))
    print(json.dumps(results))


def paper(report: Report, results: dict[str, Any]) -> None:
    """What a 10-node cluster would do with 10 M objects, from the measured per-object costs."""
    coordinator = results.get("coordinator", {})
    overhead = results.get("overhead", {})
    lines = []
    rows = []
    listing_ms = coordinator.get("per_1000", {})
    commits = {b: (c, cpu) for b, _, c, cpu in coordinator.get("commits", [])}
    commit_row_us = 1e6 * commits[500][1] / 500 if 500 in commits else None
    dispatch = overhead.get("per_object", {})
    dask_c = [k for k in dispatch if k[0].startswith("dask")]
    workloads = []
    if "cpu" in results:
        cpu = results["cpu"]
        ms = cpu["runs"].get("processes:2") or cpu["runs"]["threads"]
        per_doc = med([m.workers_cpu for m in ms]) / cpu["documents"]
        workloads.append(("PDF extract + write_json (texlive docs, ~%d pages)" % (cpu["pages"] // cpu["documents"]),
                          per_doc))
    if "io" in results:
        io = results["io"]
        ms = io["runs"].get("processes:2") or io["runs"]["threads"]
        workloads.append(("4 KiB copy from S3 (worker CPU; moto's own not counted)",
                          med([m.workers_cpu or m.cpu for m in ms]) / io["count"]))
    for name, list_ms in listing_ms.items():
        lines.append(f"listing + diff on the coordinator ({name}): {1000 * list_ms:.1f} ms CPU per 1,000 keys -> "
                     f"{BIG / 1000 * list_ms:.0f} s of one core for {BIG // 1_000_000} M keys")
    if commit_row_us:
        lines.append(f"SQLite commits of 500 outcomes: {commit_row_us:.1f} us CPU per row -> at most "
                     f"{1e6 / commit_row_us:,.0f} rows/s on one core; {BIG * commit_row_us / 1e6:.0f} s for "
                     f"{BIG // 1_000_000} M")
    for (executor, c), (_wall, _cpu, coord) in sorted(dispatch.items()):
        if executor == "threads":
            continue  # no dispatch of its own: the objects run in the coordinator itself
        lines.append(f"dispatch + collection on the coordinator, {executor} at concurrency {c}: {1000 * coord:.3f} ms "
                     f"CPU per object -> at most {1 / max(coord, 1e-9):,.0f} objects/s on one core")
    list_key = (listing_ms.get("s3 (moto)") or listing_ms.get("local") or 0.0) / 1000
    if dask_c and workloads:
        best = min(dask_c, key=lambda k: dispatch[k][2])
        coord = dispatch[best][2] + list_key  # dispatch, collection and commit (measured together) + listing
        for name, work_cpu in workloads:
            cluster = NODES * CORES / work_cpu
            limit = 1 / coord
            rate = min(cluster, limit)
            rows.append((name, f"{1000 * work_cpu:.2f}", f"{cluster:,.0f}", f"{1000 * coord:.3f}", f"{limit:,.0f}",
                         f"{rate:,.0f}", "coordinator" if limit < cluster else "workers",
                         f"{BIG / rate / 3600:.2f}"))
        lines.append(f"coordinator CPU per object = {best[0]} dispatch + collection + commit at concurrency {best[1]} "
                     f"({1000 * dispatch[best][2]:.3f} ms, its LocalCluster's scheduler included) + listing and diff "
                     f"of one key ({1000 * list_key:.3f} ms)")
        batch = max(1, best[1] // (2 * 2))
        lines.append(f"objects in flight never exceed the sync's concurrency, and a batch is at most concurrency // "
                     f"(2 x workers): {NODES * CORES} workers with batches of {batch} (as measured here) need "
                     f"concurrency >= {2 * NODES * CORES * batch:,}; the default 8 keeps 8 objects in flight")
    report.table(f"On paper: {NODES} nodes x {CORES} cores, {BIG // 1_000_000} M objects (workers at one core per "
                 "process; the coordinator one Python process: its CPU per object caps the whole cluster)",
                 ["workload", "worker CPU ms/object", "cluster objects/s", "coordinator CPU ms/object",
                  "coordinator cap objects/s", "expected objects/s", "limit", f"hours for {BIG // 1_000_000} M"],
                 rows)
    for line in lines:
        report.emit(line)


# =========================================================================== main


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "--reference-child":
        reference_child(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
        return 0
    if len(sys.argv) >= 2 and sys.argv[1] == "--sqlite-child":
        sqlite_child(Path(sys.argv[2]), int(sys.argv[3]))
        return 0
    parser = base_parser(__doc__)
    parser.add_argument("--parts", default="cpu,io,overhead,coordinator",
                        help="which parts to run (default cpu,io,overhead,coordinator)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (default 3)")
    parser.add_argument("--executors", default="threads,processes:2,dask:2",
                        help="--executor values compared (default threads,processes:2,dask:2; the first is the base)")
    parser.add_argument("--procs", type=int, default=2, help="processes of the reference (default 2)")
    parser.add_argument("--concurrency", type=int, default=8, help="the PDF sync's concurrency (default 8)")
    parser.add_argument("--min-pdfs", type=int, default=200, help="fetch more packages until this many PDFs")
    parser.add_argument("--max-pdfs", type=int, default=0, help="use at most this many PDFs (0: all found)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "flexingest-bm8-corpus",
                        help="where the Debian packages are fetched and unpacked (kept between runs)")
    parser.add_argument("--io-count", type=int, default=10_000)
    parser.add_argument("--io-size", type=int, default=4 * KiB)
    parser.add_argument("--io-concurrency", type=int, default=16)
    parser.add_argument("--io-extra", default="", help="more --executor values for the I/O part only")
    parser.add_argument("--tiny-count", type=int, default=1000)
    parser.add_argument("--tiny-concurrency", type=int_list, default=[8, 64],
                        help="concurrencies of the overhead part (default 8,64; the first is the base)")
    parser.add_argument("--startup-count", type=int, default=50)
    parser.add_argument("--list-local", type=int, default=100_000, help="local files for the listing cost")
    args = parser.parse_args()
    args.executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    args.io_extra = [e.strip() for e in args.io_extra.split(",") if e.strip()]
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    busy = wait_quiet(args.wait_quiet)
    work = workdir("bm8", args.keep)
    report = Report("bm8_executors", "BM-8 executors: threads, processes, Dask (issue 13)", args.save)
    report.emit(machine_info(servers_=["s3"] if parts & {"io", "coordinator"} else []))
    report.emit(f"machine busy before the run: {busy:.2f} cores used by other processes (--wait-quiet "
                f"{args.wait_quiet:g})")
    results: dict[str, Any] = {}
    everything: list[Any] = []
    server = None
    if "cpu" in parts:
        part_cpu(args, work, report, results, everything)
    if "overhead" in parts:
        part_overhead(args, work, report, results, everything)
    if parts & {"io", "coordinator"}:
        server = start_server("s3")
    if "io" in parts:
        part_io(args, work, report, results, everything, server)
    if "coordinator" in parts:
        part_coordinator(args, work, report, results, everything, server)
    paper(report, results)
    ms = [m for m in everything if m.wall >= 1.0] or everything
    if ms:
        report.emit("")
        report.emit(f"noise: other processes used {sum(m.others_cpu for m in ms) / sum(m.wall for m in ms):.2f} of "
                    f"{os.cpu_count()} cores on average during the measured commands of 1 s or more (worst "
                    f"{max(m.others_cpu / m.wall for m in ms):.2f}); CPU seconds hold under noise, wall times "
                    "do not.")
        report.commands(everything, "Commands (to reproduce; DASK_TEMPORARY_DIRECTORY and OMP_THREAD_LIMIT=1 set):")
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
