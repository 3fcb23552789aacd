"""BM-5: the state store alone: an unchanged diff over 1M and 5M state rows.

For each size N: build a state file with flexingest's own ``State`` (so the schema is the
current one), then fill ``objects`` with N rows in status ``done`` through one ``executemany``
(the same rows a pass would have recorded, much faster than N ``State.record`` calls). Then, in
a fresh child process (so that its peak RSS is its own), time what an unchanged pass does to the
state, phase by phase, the way ``flexingest.sync.run_pass`` calls it:

    open      State(path)                      (header check, PRAGMA quick_check, migrations)
    listing   begin_listing + add_listing      (the same N keys and versions, pages of 1000; only
                                               the calls are timed, not generating the rows)
    plan      plan(sync)                       (the diff: LEFT JOIN listing x objects)
    gone      unmark_gone + mark_gone          (keys in the state, absent from the listing)

and report seconds per phase, the state file's size and the child's peak RSS.

    .venv/bin/python benchmarks/bm5_state.py                        # 1M and 5M rows
    .venv/bin/python benchmarks/bm5_state.py --rows 1000000

Target (issue 6, with BM-1): memory flat in the number of objects; the diff a set operation.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import measure, py_spy_profile, wait_quiet  # noqa: E402
from _report import Report, fmt_count, fmt_mb, fmt_s, machine_info  # noqa: E402
from _setup import PYTHON, base_parser, clean_env, int_list, key_name, log, workdir  # noqa: E402

SYNC = "bench"
PAGE = 1000


def version_of(i: int) -> str:
    return f"{i:032x}"  # an MD5-sized ETag


def listing_rows(n: int):
    for i in range(n):
        yield (key_name(i), version_of(i), 4096, 1_700_000_000.0 + i, None)


def build(path: Path, n: int) -> float:
    """A state file with ``n`` done rows of sync ``bench``; returns seconds."""
    from flexingest.state import State, now_iso

    started = time.perf_counter()
    state = State(path)
    now = now_iso()
    with state.transaction() as db:
        db.executemany(
            "INSERT INTO objects (sync, key, version, size, modified, status, attempts, error, processed_at,"
            " gone_at, updated_at) VALUES (?, ?, ?, ?, ?, 'done', 1, NULL, ?, NULL, ?)",
            ((SYNC, key, version, size, modified, now, now) for key, version, size, modified, _ in listing_rows(n)))
    run = state.start_run(SYNC, "pass")
    state.finish_run(run, {"listed": n, "new": n, "done": n}, "ok")
    state.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    state.close()
    return time.perf_counter() - started


def child(path: Path, n: int) -> None:
    """The measured part, in its own process: prints the phase timings as JSON."""
    from flexingest.state import State

    t = {}
    t0 = time.perf_counter()
    state = State(path, create=False)
    t["open"] = time.perf_counter() - t0

    # Only the state's calls are timed: generating the rows (Python) is left out.
    t0 = time.perf_counter()
    state.begin_listing()
    spent = time.perf_counter() - t0
    page: list = []
    for row in listing_rows(n):
        page.append(row)
        if len(page) >= PAGE:
            t0 = time.perf_counter()
            state.add_listing(page)
            spent += time.perf_counter() - t0
            page = []
    t0 = time.perf_counter()
    state.add_listing(page)
    t["listing"] = spent + time.perf_counter() - t0

    t0 = time.perf_counter()
    plan = state.plan(SYNC)
    t["plan"] = time.perf_counter() - t0
    counts = dict(plan.counts)

    t0 = time.perf_counter()
    state.unmark_gone(SYNC)
    gone = state.mark_gone(SYNC)
    t["gone"] = time.perf_counter() - t0
    state.close()
    print(json.dumps({"phases": t, "counts": counts, "gone": gone}))


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), int(sys.argv[3]))
        return 0
    parser = base_parser(__doc__)
    parser.add_argument("--rows", type=int_list, default=[1_000_000, 5_000_000],
                        help="state sizes (default 1000000,5000000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size (median of the total shown)")
    args = parser.parse_args()
    wait_quiet(args.wait_quiet)

    work = workdir("bm5", args.keep)
    report = Report("bm5_state", "BM-5 state store: unchanged diff over N rows", args.save)
    report.emit(machine_info())
    report.emit(f"keys like {key_name(0)!r}, 32-hex versions; listing added in pages of {PAGE}; the "
                f"process also generates the N listing rows (Python, not in the phase times, in the wall time)")
    rows = []
    runs = []
    for n in args.rows:
        path = work / f"state-{n}.db"
        log(f"building a state file with {n} rows")
        built = build(path, n)
        size = os.path.getsize(path)
        log(f"built in {built:.1f}s ({size / 2**20:.0f} MiB); measuring the unchanged diff")
        results = []
        for _ in range(max(1, args.repeat)):
            m = measure(f"state {fmt_count(n)}", [PYTHON, __file__, "--child", path, n], env=clean_env(),
                        timeout=args.timeout)
            data = json.loads(m.stdout.strip().splitlines()[-1])
            if data["counts"] != {"done": n} or data["gone"] != 0:
                raise RuntimeError(f"unexpected diff for an unchanged listing: {data}")
            results.append((m, data))
            runs.append(m)
        m, data = sorted(results, key=lambda r: sum(r[1]["phases"].values()))[(len(results) - 1) // 2]
        ph = data["phases"]
        total = sum(ph.values())
        wal = Path(f"{path}-wal")
        rows.append((fmt_count(n), fmt_s(built), fmt_s(ph["open"]), fmt_s(ph["listing"]), fmt_s(ph["plan"]),
                     fmt_s(ph["gone"]), fmt_s(total), f"{n / total:,.0f}", fmt_s(m.wall), fmt_mb(m.peak_rss),
                     fmt_mb(size), fmt_mb(os.path.getsize(path) + (wal.stat().st_size if wal.exists() else 0))))
    report.table("Unchanged diff (seconds per phase; rows/s over the four phases; wall: the child process, "
                 "start-up and listing generation included)",
                 ["rows", "build s", "open s", "listing s", "plan s", "gone s", "diff total s", "rows/s",
                  "wall s", "peak RSS MiB", "file MiB", "after MiB"], rows)
    report.emit("file MiB: the state file after the build; after MiB: file + WAL after the diff.")
    report.noise(runs)
    report.commands(runs)
    if args.profile and args.rows:
        n = args.rows[0]
        report.emit("")
        report.emit(f"Profile: unchanged diff over {fmt_count(n)} rows")
        report.emit(py_spy_profile([PYTHON, __file__, "--child", work / f"state-{n}.db", n], env=clean_env(),
                                   focus="bm5_state", timeout=args.timeout))
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
