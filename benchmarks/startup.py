"""Start-up: ``flexingest --help`` and ``flexingest validate pipelines/demo.yaml`` wall time, and
what importing ``flexingest.cli`` drags in.

- wall time: median (and min) of ``--runs`` (default 10) runs of each command, after one
  unmeasured warm-up run (bytecode compiled, files in the page cache); ``python -c pass`` (the
  interpreter alone) and ``python -c "import flexingest.cli"`` are shown for reference.
- imports: which heavy modules are in ``sys.modules`` after ``import flexingest.cli`` and after
  the ``--help`` / ``validate`` commands ran (in a subprocess each), and the slowest top-level
  imports of each command by ``python -X importtime`` (cumulative).

    .venv/bin/python benchmarks/startup.py

Target (issue 6): ``flexingest --help`` under 0.3 s, no cloud backend imported.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import Measurement, measure, wait_quiet  # noqa: E402
from _report import Report, fmt_mb, machine_info  # noqa: E402
from _setup import FLEXINGEST, PYTHON, REPO, base_parser, clean_env, compile_flexingest  # noqa: E402

TARGET = 0.3
HEAVY = ["s3fs", "gcsfs", "adlfs", "botocore", "aiobotocore", "boto3", "azure.storage.blob", "azure.identity",
         "google.auth", "aiohttp", "fsspec", "pydantic", "yaml", "apscheduler", "pypdfium2", "striprtf", "zstandard",
         "click", "sqlite3",
         "requests", "jsonschema"]
DEMO = REPO / "pipelines" / "demo.yaml"

# Runs the command in-process (click's standalone mode exits), then reports sys.modules at exit.
PROBE = r"""
import atexit, json, sys
heavy = json.loads(sys.argv[1])
mode = sys.argv[2]
def report():
    print("\n@@" + json.dumps({m: m in sys.modules for m in heavy}), file=sys.stderr)
if mode == "import":
    import flexingest.cli
    report()
else:
    atexit.register(report)
    sys.argv = ["flexingest", *sys.argv[3:]]
    from flexingest.cli import cli
    cli()
"""


def modules_after(mode: str, *argv: str) -> dict[str, bool]:
    proc = subprocess.run([PYTHON, "-c", PROBE, json.dumps(HEAVY), mode, *argv], capture_output=True, text=True,
                          env=clean_env(), cwd=REPO)
    found = [line for line in proc.stderr.splitlines() if line.startswith("@@")]
    if not found:
        raise RuntimeError(f"import probe {mode} {argv} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return json.loads(found[-1][2:])


def importtime(argv: list[str], top: int = 12, *, by_self: bool = False) -> list[tuple[str, float, float]]:
    """(module, cumulative ms, self ms) of the slowest top-level imports of ``python -X importtime``
    (``by_self``: the modules of any depth with the largest self time)."""
    proc = subprocess.run([PYTHON, "-X", "importtime", *argv], capture_output=True, text=True, env=clean_env(),
                          cwd=REPO)
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S.*)$", line)
        if not m:
            continue
        self_us, cum_us, indent, name = int(m.group(1)), int(m.group(2)), len(m.group(3)), m.group(4).strip()
        if by_self or indent <= 1:  # top-level imports only, unless by self time
            rows.append((name, cum_us / 1000, self_us / 1000))
    return sorted(rows, key=lambda r: -r[2] if by_self else -r[1])[:top]


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--runs", type=int, default=10, help="runs per command (default 10, median shown)")
    args = parser.parse_args()
    wait_quiet(args.wait_quiet)
    compile_flexingest()

    report = Report("startup", "Start-up: flexingest --help and validate", args.save)
    report.emit(machine_info())
    commands = [
        ("python -c pass (interpreter alone)", [PYTHON, "-c", "pass"]),
        ("python -c 'import flexingest.cli'", [PYTHON, "-c", "import flexingest.cli"]),
        ("flexingest --help", [FLEXINGEST, "--help"]),
        ("flexingest --version", [FLEXINGEST, "--version"]),
        ("flexingest validate pipelines/demo.yaml", [FLEXINGEST, "validate", str(DEMO)]),
    ]
    rows = []
    shown: list[Measurement] = []
    all_runs: list[Measurement] = []
    for label, argv in commands:
        measure(label, argv, env=clean_env(), cwd=REPO, timeout=args.timeout)  # warm-up
        runs = [measure(label, argv, env=clean_env(), cwd=REPO, timeout=args.timeout) for _ in range(args.runs)]
        walls = [m.wall for m in runs]
        med = statistics.median(walls)
        target = ""
        if label == "flexingest --help":
            target = "yes" if med < TARGET else "NO"
        rows.append((label, f"{med:.3f}", f"{min(walls):.3f}", f"{max(walls):.3f}",
                     fmt_mb(max(m.peak_rss for m in runs)), target))
        shown.append(runs[0])
        all_runs.extend(runs)
    report.table(f"Wall time over {args.runs} runs (s; target: --help < {TARGET} s)",
                 ["command", "median s", "min s", "max s", "peak RSS MiB", "target met"], rows, "lrrrrl")

    probes = [("import flexingest.cli", modules_after("import")),
              ("flexingest --help", modules_after("run", "--help")),
              ("flexingest validate demo", modules_after("run", "validate", str(DEMO)))]
    mod_rows = [(mod, *("yes" if p[mod] else "-" for _, p in probes)) for mod in HEAVY]
    report.table("Modules in sys.modules afterwards (yes = imported)", ["module", *(t for t, _ in probes)],
                 mod_rows, "l" + "r" * len(probes))
    backends = [m for m in ("s3fs", "gcsfs", "adlfs", "botocore", "aiobotocore", "azure.storage.blob")
                if probes[1][1][m]]
    report.emit(f"cloud backends imported by --help: {', '.join(backends) if backends else 'none'}")

    for title, argv in (("flexingest --help", ["-m", "flexingest", "--help"]),
                        ("flexingest validate demo", ["-m", "flexingest", "validate", str(DEMO)])):
        report.table(f"Slowest top-level imports of {title} (python -X importtime)",
                     ["module", "cumulative ms", "self ms"],
                     [(name, f"{cum:.1f}", f"{own:.1f}") for name, cum, own in importtime(argv)])
        report.table(f"Modules of any depth with the largest self time, {title} (python -X importtime)",
                     ["module", "cumulative ms", "self ms"],
                     [(name, f"{cum:.1f}", f"{own:.1f}") for name, cum, own in importtime(argv, by_self=True)])
    report.noise(all_runs)
    report.commands(shown)
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
