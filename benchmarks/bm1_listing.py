"""BM-1: listing + diff scale: an unchanged pass vs the peers' pure listing.

For each backend (moto, fake-gcs-server, Azurite) and each bucket size N: fill a bucket with N
small objects, make a first flexingest pass with a step that does nothing (a ``python`` step
returning the record, so no object is read), then time ``flexingest run P --once`` again, when
every object is already done: the pass lists the bucket and diffs it against the state. The
same bucket is then listed by the peers: ``rclone lsf -R``, and on S3 ``aws s3 ls --recursive``
and ``s5cmd ls``. The same on a local folder of ``--local-files`` files, against ``find`` and
``rclone lsf -R``.

A diagnostic row, "flexingest listing only", runs flexingest's connector listing
(``Storage.iter_pages``) in a Python process without state, diff or CLI: the gap between it and
the unchanged pass is flexingest's own cost (state, diff, start-up); the gap between it and the
peers is the client library's (s3fs / gcsfs / adlfs) and Python's.

    .venv/bin/python benchmarks/bm1_listing.py                                  # 10k on each server, local 1M
    .venv/bin/python benchmarks/bm1_listing.py --sizes 10000,100000 --backends s3
    .venv/bin/python benchmarks/bm1_listing.py --backends local --local-files 200000

Targets (issue 6): unchanged pass <= 1.3 x the fastest peer's listing; memory flat in bucket
size (1M keys under 500 MB RSS).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import (  # noqa: E402
    Measurement,
    Peers,
    best,
    expect_counts,
    flexingest_argv,
    measure,
    py_spy_profile,
    repeat,
    run_flexingest,
    summary_counts,
    wait_quiet,
)
from _report import Report, fmt_count, fmt_mb, fmt_ratio, fmt_s, machine_info  # noqa: E402
from _setup import (  # noqa: E402
    BACKEND_KINDS,
    PYTHON,
    SERVER_NAMES,
    base_parser,
    clean_env,
    connector_config,
    ensure_peers,
    fill,
    int_list,
    key_name,
    kinds_list,
    log,
    make_local_files,
    new_store,
    noop_steps,
    payload,
    start_server,
    state_path,
    write_pipeline,
)

TARGET = 1.3
OBJECT_SIZE = 64  # bytes per object: listing cost does not depend on it

LISTING_ONLY = str(Path(__file__).resolve().parent / "_list_only.py")


def flexingest_rows(kind: str, n: int, first: Measurement, unchanged: Measurement,
                    listing: Measurement | None) -> list[tuple[str, Measurement]]:
    rows = [("flexingest first pass (no-op step)", first), ("flexingest unchanged pass", unchanged)]
    if listing is not None:
        rows.append(("flexingest listing only (diagnostic)", listing))
    return rows


def bench_one(kind: str, n: int, server, peers: Peers, work: Path, args, report_rows: list, summary: list,
              all_measurements: list[Measurement], profile_targets: list) -> None:
    where = SERVER_NAMES[kind]
    folder = work / f"{kind}-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "local":
        store = new_store("local", None, folder)
        log(f"creating {n} files")
        make_local_files(Path(store.bucket), n)
    else:
        store = new_store(kind, server, folder)
        fill(store, ((key_name(i), payload(OBJECT_SIZE, i)) for i in range(n)), n)
    pipeline = write_pipeline(folder, kind, connector_config(store), steps=noop_steps(folder),
                              concurrency=args.concurrency)
    log(f"{where} {n}: flexingest first pass (no-op step)")
    first = run_flexingest(f"{kind} {n} first", pipeline, server=server, timeout=args.timeout)
    expect_counts(first, listed=n, new=n, done=n, failed=0)
    log(f"{where} {n}: flexingest unchanged pass x{args.repeat}")

    def unchanged_pass() -> Measurement:
        m = run_flexingest(f"{kind} {n} unchanged", pipeline, server=server, timeout=args.timeout)
        expect_counts(m, listed=n, new=0, changed=0, done=0, failed=0)
        return m

    unchanged = repeat(args.repeat, unchanged_pass)
    listing = None
    try:
        listing = measure(f"{kind} {n} listing only", [PYTHON, LISTING_ONLY, pipeline], env=clean_env(),
                          server=server, timeout=args.timeout)
        if int(listing.stdout.strip() or -1) != n:
            log(f"listing-only counted {listing.stdout.strip()} keys, expected {n}")
    except RuntimeError as exc:  # the core's internals may have moved: the row is a diagnostic only
        log(f"listing-only diagnostic skipped: {str(exc)[:300]}")
        listing = None

    # Peers
    peer_runs: list[tuple[str, Measurement]] = []
    env, shown = peers.rclone_env()
    src = peers.rclone_path(store.bucket)
    variants = [("rclone lsf -R", ["lsf", "-R", "--files-only", src])]
    if kind != "local":
        variants.append(("rclone lsf -R --fast-list", ["lsf", "-R", "--files-only", "--fast-list", src]))
    for label, rargs in variants:
        peer_runs.append((label, repeat(args.repeat, lambda rargs=rargs, label=label: measure(
            f"{kind} {n} {label}", peers.rclone(*rargs), env=env, env_shown=shown, server=server,
            timeout=args.timeout))))
    if kind == "s3":
        env, shown = peers.aws_env()
        peer_runs.append(("aws s3 ls --recursive", repeat(args.repeat, lambda: measure(
            f"{kind} {n} aws s3 ls", peers.aws("s3", "ls", "--recursive", f"s3://{store.bucket}"), env=env,
            env_shown=shown, server=server, timeout=args.timeout))))
        env, shown = peers.s5cmd_env()
        peer_runs.append(("s5cmd ls", repeat(args.repeat, lambda: measure(
            f"{kind} {n} s5cmd ls", peers.s5("ls", f"s3://{store.bucket}/*"), env=env, env_shown=shown,
            server=server, timeout=args.timeout))))
    if kind == "local":
        env = clean_env()
        peer_runs.append(("find -type f", repeat(args.repeat, lambda: measure(
            f"local {n} find", ["find", store.bucket, "-type", "f"], env=env, timeout=args.timeout))))
        peer_runs.append(("find -printf (size, mtime)", repeat(args.repeat, lambda: measure(
            f"local {n} find -printf", ["find", store.bucket, "-type", "f", "-printf", "%P %s %T@\\n"],
            env=env, timeout=args.timeout))))
    for label, m in peer_runs:
        lines = m.stdout_lines()
        if lines != n:
            log(f"warning: {label} printed {lines} lines for {n} objects")

    fastest = best(m for _, m in peer_runs)
    fastest_label = next(label for label, m in peer_runs if m is fastest) if fastest else "-"
    for label, m in flexingest_rows(kind, n, first, unchanged, listing) + peer_runs:
        ratio = m.wall / fastest.wall if fastest and m.ok and m is not first else None
        report_rows.append((where, fmt_count(n), label, fmt_s(m.wall), f"{n / m.wall:,.0f}" if m.wall else "-",
                            fmt_mb(m.peak_rss), fmt_s(m.cpu), fmt_s(m.server_cpu), fmt_s(m.others_cpu),
                            fmt_ratio(ratio)))
        all_measurements.append(m)
    ratio = unchanged.wall / fastest.wall if fastest else None
    in_pass = summary_counts(unchanged).get("seconds")
    summary.append((where, fmt_count(n), fmt_s(unchanged.wall), fmt_s(in_pass),
                    f"{fastest_label} {fmt_s(fastest.wall) if fastest else '-'}", fmt_ratio(ratio),
                    "yes" if ratio is not None and ratio <= TARGET else "NO", fmt_mb(unchanged.peak_rss),
                    fmt_mb(state_path(pipeline).stat().st_size)))
    profile_targets.append((f"{where} {fmt_count(n)} unchanged pass", flexingest_argv("run", pipeline, "--once"),
                            pipeline.parent))


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--sizes", type=int_list, default=[10_000], help="objects per bucket (default 10000)")
    parser.add_argument("--backends", type=kinds_list, default=list(BACKEND_KINDS),
                        help="s3,gcs,azure_blob (default: all three); add 'local' to run only the local part")
    parser.add_argument("--local-files", type=int, default=1_000_000,
                        help="files for the local-connector run (0: skip it); default 1000000")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement (median shown)")
    parser.add_argument("--concurrency", type=int, default=32, help="sync concurrency of the first pass")
    args = parser.parse_args()
    wait_quiet(args.wait_quiet)

    from _setup import workdir

    work = workdir("bm1", args.keep)
    versions = ensure_peers(("rclone", "aws", "s5cmd"))
    report = Report("bm1_listing", "BM-1 listing + diff: unchanged pass vs pure listing", args.save)
    report.emit(machine_info(versions, args.backends))
    report.emit(f"objects: {OBJECT_SIZE} B each, 1000 per 'folder'; repeat={args.repeat} (median); "
                f"flexingest first pass: python no-op step, concurrency {args.concurrency}")

    rows: list = []
    summary: list = []
    measurements: list[Measurement] = []
    profile_targets: list = []
    for kind in [k for k in args.backends if k != "local"]:
        server = start_server(kind)
        peers = Peers(kind, server, work)
        try:
            for n in args.sizes:
                bench_one(kind, n, server, peers, work, args, rows, summary, measurements, profile_targets)
        finally:
            if not args.profile:
                server.stop()  # free the emulator's memory before the next one
    if args.local_files:
        peers = Peers("local", None, work)
        bench_one("local", args.local_files, None, peers, work, args, rows, summary, measurements, profile_targets)

    report.table("All runs (wall s: median of --repeat; RSS: peak of the command's processes; "
                 "CPU: user+sys of the command; server CPU: the emulator's, meanwhile; others CPU: every other "
                 "process of the machine, meanwhile (noise); ratio: / fastest peer)",
                 ["server", "N", "tool", "wall s", "objects/s", "peak RSS MiB", "CPU s", "server CPU s",
                  "others CPU s", "ratio"], rows, "llrrrrrrrr")
    report.table(f"Summary: unchanged pass vs fastest peer (target <= {TARGET}x; 1M keys under 500 MB RSS)",
                 ["server", "N", "flexingest s", "in-pass s", "fastest peer s", "ratio", "target met",
                  "peak RSS MiB", "state MiB"], summary, "llrrlrrrr")
    report.emit("in-pass s: the duration flexingest's own summary line reports (list + diff + record), "
                "i.e. without interpreter start-up and imports.")
    report.noise(measurements)
    report.commands(measurements)
    if args.profile:
        for title, argv, cwd in profile_targets:
            report.emit("")
            report.emit(f"Profile: {title}")
            report.emit(py_spy_profile(argv, env=clean_env(), cwd=cwd, timeout=args.timeout))
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
