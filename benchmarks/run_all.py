"""Run every benchmark, one after the other, and print every table.

Quick defaults (about 25 minutes on a 2-core machine, each script well under 10 minutes):

    startup.py
    bm5_state.py          --rows 1000000
    bm1_listing.py        --sizes 10000 --local-files 200000 --repeat 3
    bm2_incremental.py    --objects 20000
    bm3_small_objects.py  --small-count 2000
    bm4_large_object.py   --size-mb 512
    bm6_extract.py        --max-pdfs 80
    bm7_read_path.py      --repeat 1
    bm8_executors.py      --repeat 1 --io-count 3000 --list-local 20000
    bm9_events.py         --rates 10,100 --duration 15 --repeat 1
    bm3_fsync.py          --count 3000 --repeat 1

``--full`` runs each with the sizes of issue 6 instead (hours: moto serves ~400 requests/s).
Each script's output is saved to ``benchmarks/results/<name>-<date>.txt`` (``--no-save`` to skip).

    .venv/bin/python benchmarks/run_all.py
    .venv/bin/python benchmarks/run_all.py --only bm1,startup --profile
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

QUICK = {
    "startup": [],
    "bm5": ["--rows", "1000000"],
    "bm1": ["--sizes", "10000", "--local-files", "200000", "--repeat", "3"],
    "bm2": ["--objects", "20000"],
    "bm3": ["--small-count", "2000"],
    "bm4": ["--size-mb", "512"],
    "bm6": ["--max-pdfs", "80"],
    "bm7": ["--repeat", "1"],
    "bm8": ["--repeat", "1", "--io-count", "3000", "--list-local", "20000"],
    "bm9": ["--rates", "10,100", "--duration", "15", "--repeat", "1"],
    "fsync": ["--count", "3000", "--repeat", "1"],
}
SCRIPTS = {
    "startup": "startup.py",
    "bm1": "bm1_listing.py",
    "bm2": "bm2_incremental.py",
    "bm3": "bm3_small_objects.py",
    "bm4": "bm4_large_object.py",
    "bm5": "bm5_state.py",
    "bm6": "bm6_extract.py",
    "bm7": "bm7_read_path.py",
    "bm8": "bm8_executors.py",
    "bm9": "bm9_events.py",
    "fsync": "bm3_fsync.py",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the sizes of issue 6 (each script's own defaults)")
    parser.add_argument("--only", default="", help="comma-separated subset: " + ",".join(QUICK))
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/*.txt")
    parser.add_argument("--profile", action="store_true", help="pass --profile to the scripts that take it")
    args = parser.parse_args()

    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(QUICK)
    unknown = [n for n in names if n not in QUICK]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(QUICK)}")
    summary = []
    for name in names:
        argv = [sys.executable, str(HERE / SCRIPTS[name]), *([] if args.full else QUICK[name])]
        if not args.no_save:
            argv.append("--save")
        if args.profile and name != "startup":
            argv.append("--profile")
        print(f"\n$ {' '.join(argv)}", flush=True)
        started = time.perf_counter()
        code = subprocess.run(argv).returncode
        summary.append((name, code, time.perf_counter() - started))
    print("\nrun_all: " + ", ".join(f"{n} {'ok' if c == 0 else f'FAILED ({c})'} in {s:.0f}s" for n, c, s in summary))
    return 0 if all(c == 0 for _, c, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
