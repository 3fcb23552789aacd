"""The cost of fsync'ing local outputs (issue 10), measured on BM-3's first pass.

Local ``copy`` outputs are fsync'ed: each file while it is unnamed, and every folder that
gained a name once per commit batch. This compares, on the same machine in the same run:

- **before**: flexingest at ``--before`` (default ``e21de8b``, the commit before fsync was
  added), exported with ``git archive`` into the work folder and run from this venv with
  ``PYTHONPATH`` pointing at it;
- **main**: this tree;
- **main, fsync stubbed** (diagnostic): this tree with ``os.fsync`` replaced by a no-op
  (a ``sitecustomize`` on ``PYTHONPATH``): what the same code costs without the syscalls, so
  that the difference to *main* is fsync alone, not the other changes since *before*.

over two first passes into an empty folder: ``--count`` objects of ``--size`` bytes from moto
(S3, ``copy``, concurrency ``--concurrency``) and the same number of local files copied to
another local folder. Each is run ``--repeat`` times (variants interleaved), then once more
under ``strace -f -c -w -e trace=fsync,fdatasync`` to count the calls and the wall time spent
in them (summed over threads; SQLite's own syncs of the state file included).

    .venv/bin/python benchmarks/bm3_fsync.py --wait-quiet 120 --save
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import expect_counts, wait_quiet  # noqa: E402
from _report import Report, machine_info  # noqa: E402
from _setup import (  # noqa: E402
    FLEXINGEST,
    REPO,
    KiB,
    base_parser,
    clean_env,
    connector_config,
    count_files,
    fill,
    key_name,
    log,
    make_local_files,
    new_store,
    payload,
    start_server,
    workdir,
    write_pipeline,
)
from _tree import TreeMeasurement, measure_tree, med, spread  # noqa: E402

VARIANTS = ("before", "main", "main, fsync stubbed")


def export_tree(commit: str, target: Path) -> str:
    """flexingest/ at ``commit`` into ``target`` (git archive); returns the commit's one-line log."""
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "flexingest"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(target / "flexingest")], check=True)
    return subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %s", commit], check=True,
                          capture_output=True, text=True).stdout.strip()


def variant_env(variant: str, before: Path, stub: Path) -> dict[str, str]:
    if variant == "before":
        return clean_env(PYTHONPATH=str(before))
    if variant == "main, fsync stubbed":
        return clean_env(PYTHONPATH=str(stub))
    return clean_env()


_STRACE_LINE = re.compile(r"^\s*[\d.]+\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$")


def strace_fsync(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, tuple[float, int]]:
    """{syscall: (seconds, calls)} of fsync and fdatasync over the whole process tree."""
    with tempfile.NamedTemporaryFile(prefix="flexingest-bm-strace-", suffix=".txt") as out:
        subprocess.run(["strace", "-f", "-c", "-w", "-e", "trace=fsync,fdatasync", "-o", out.name, "--", *argv],
                       env=env, cwd=cwd, check=True, capture_output=True)
        text = Path(out.name).read_text()
    found = {}
    for line in text.splitlines():
        m = _STRACE_LINE.match(line)
        if m and m.group(5) in ("fsync", "fdatasync"):
            found[m.group(5)] = (float(m.group(1)), int(m.group(3)))
    return found


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=4 * KiB)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", default="e21de8b", help="the commit before fsync (default e21de8b)")
    parser.add_argument("--sources", default="s3,local", help="s3 (moto), local, or both (default)")
    parser.add_argument("--no-strace", dest="strace", action="store_false")
    args = parser.parse_args()
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    busy = wait_quiet(args.wait_quiet)
    work = workdir("fsync", args.keep)
    before = work / "before"
    described = export_tree(args.before, before)
    stub = work / "stub"
    stub.mkdir()
    (stub / "sitecustomize.py").write_text("import os\n\nos.fsync = lambda fd: None  # the diagnostic: no fsync\n")
    report = Report("bm3_fsync", "fsync of local outputs in BM-3: before / after (issue 10)", args.save)
    report.emit(machine_info(servers_=["s3"] if "s3" in sources else []))
    report.emit(f"before: {described} (flexingest/ exported with git archive, run with PYTHONPATH)")
    report.emit(f"machine busy before the run: {busy:.2f} cores used by other processes")
    fs = subprocess.run(["findmnt", "-no", "FSTYPE,SOURCE,OPTIONS", "-T", str(work)], capture_output=True,
                        text=True).stdout.strip()
    report.emit(f"outputs on: {work} ({fs})")
    server = start_server("s3") if "s3" in sources else None
    everything: list[TreeMeasurement] = []
    for source in sources:
        if source == "s3":
            store = new_store("s3", server, work)
            fill(store, ((key_name(i), payload(args.size, i)) for i in range(args.count)), args.count)
            config: dict[str, Any] = connector_config(store)
        else:
            folder = work / "local-src"
            make_local_files(folder, args.count, size=args.size)
            config = {"path": str(folder)}
        out = work / f"out-{source}"
        pipeline = write_pipeline(work, source, config, steps=[{"copy": {"url": str(out)}}], name=f"fsync-{source}",
                                  concurrency=args.concurrency)
        runs: dict[str, list[TreeMeasurement]] = {v: [] for v in VARIANTS}

        def fresh(pipeline: Path = pipeline, out: Path = out) -> None:
            for leftover in (work / ".flexingest").glob(f"{pipeline.stem}.db*"):
                leftover.unlink()
            shutil.rmtree(out, ignore_errors=True)

        argv = [FLEXINGEST, "run", str(pipeline), "--once"]
        for r in range(args.repeat):
            for variant in VARIANTS:
                label = f"{source} {variant} #{r + 1}"
                log(label)
                fresh()
                m = measure_tree(label, argv, env=variant_env(variant, before, stub), cwd=work, server=server,
                                 timeout=args.timeout)
                expect_counts(m, new=args.count, done=args.count, failed=0)  # type: ignore[arg-type]
                if count_files(out) != args.count:
                    raise RuntimeError(f"{label}: {count_files(out)} files, expected {args.count}")
                m.env_shown = {"PYTHONPATH": variant_env(variant, before, stub)["PYTHONPATH"]} \
                    if variant != "main" else {}
                runs[variant].append(m)
                everything.append(m)
        traced: dict[str, dict[str, tuple[float, int]]] = {}
        traced_wall: dict[str, float] = {}
        if args.strace and shutil.which("strace"):
            for variant in VARIANTS:
                log(f"{source} {variant}: under strace")
                fresh()
                started = time.perf_counter()
                traced[variant] = strace_fsync(argv, variant_env(variant, before, stub), work)
                traced_wall[variant] = time.perf_counter() - started
        base = med([m.wall for m in runs["before"]])
        base_cpu = med([m.cpu for m in runs["before"]])
        rows = []
        for variant in VARIANTS:
            ms = runs[variant]
            calls = traced.get(variant, {})
            seconds = sum(s for s, _ in calls.values())
            n = sum(c for _, c in calls.values())
            rows.append((variant, spread([m.wall for m in ms]), spread([args.count / m.wall for m in ms], "{:.0f}"),
                         spread([m.cpu for m in ms]), spread([m.server_cpu or 0.0 for m in ms]) if server else "-",
                         spread([m.others_cpu for m in ms]),
                         f"{med([m.wall for m in ms]) / base:.2f}x", f"{med([m.cpu for m in ms]) / base_cpu:.2f}x",
                         f"{n:,}" if calls else "-", f"{seconds:.2f}" if calls else "-",
                         f"{1e6 * seconds / max(n, 1):.0f}" if calls else "-",
                         f"{seconds / traced_wall[variant]:.2f}" if calls else "-"))
        what = "from moto (S3)" if source == "s3" else "local files to a local folder"
        report.table(f"{args.count} x {args.size // KiB} KiB {what}, copy, first pass into an empty folder, "
                     f"concurrency {args.concurrency}; median [min-max] of {args.repeat}; fsync columns from one "
                     f"more run under strace -f -c -w",
                     ["variant", "wall s", "objects/s", "CPU s", "server CPU s", "others CPU s", "wall x before",
                      "CPU x before", "fsync+fdatasync calls", "s in them (all threads)", "us per call",
                      "threads in fsync on average"], rows)
    report.emit("threads in fsync on average: seconds spent in fsync/fdatasync summed over threads, divided by the "
                "traced run's wall time (strace slows the traced calls; the timed runs were not traced).")
    ms = [m for m in everything if m.wall >= 1.0]
    if ms:
        report.emit(f"noise: other processes used {sum(m.others_cpu for m in ms) / sum(m.wall for m in ms):.2f} of "
                    f"{os.cpu_count()} cores on average during the measured commands")
    report.commands(everything)
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
