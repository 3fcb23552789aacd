"""BM-2: steady-state incremental pass: N objects already synced, 100 new.

One moto bucket with N small objects. Each tool first brings the whole bucket into its own local
folder (flexingest: ``run --once`` with a ``copy`` step; rclone: ``rclone copy``; aws:
``aws s3 sync``; s5cmd: ``s5cmd sync``): that initial sync is shown but is not the figure.
Then ``--new`` objects are added and each tool is timed bringing its already-synced folder up to
date: flexingest lists the bucket and diffs it against its state file; the peers list the
bucket *and* the local folder and compare them.

    .venv/bin/python benchmarks/bm2_incremental.py                   # 100k objects + 100 new
    .venv/bin/python benchmarks/bm2_incremental.py --objects 20000   # quick

Target (issue 6): flexingest <= 0.5 x rclone copy's wall time.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import (  # noqa: E402
    Measurement,
    Peers,
    expect_counts,
    flexingest_argv,
    measure,
    py_spy_profile,
    run_flexingest,
    summary_counts,
    wait_quiet,
)
from _report import Report, fmt_count, fmt_mb, fmt_ratio, fmt_s, machine_info  # noqa: E402
from _setup import (  # noqa: E402
    base_parser,
    clean_env,
    connector_config,
    count_files,
    ensure_peers,
    fill,
    key_name,
    log,
    new_store,
    payload,
    start_server,
    workdir,
    write_pipeline,
)

TARGET = 0.5


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--objects", type=int, default=100_000, help="objects already synced (default 100000)")
    parser.add_argument("--new", type=int, default=100, help="objects added before the timed pass (default 100)")
    parser.add_argument("--object-size", type=int, default=1024, help="bytes per object (default 1024)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="flexingest concurrency and rclone --transfers (default 16); aws and s5cmd "
                             "keep their defaults")
    parser.add_argument("--peers", default="rclone,aws",
                        help="peers to run (default rclone,aws; add s5cmd for 's5cmd sync', whose initial sync is "
                             "slow on moto); rclone adds an 'rclone-tuned' row")
    parser.add_argument("--repeat", type=int, default=1,
                        help="incremental rounds (each adds --new objects; the median is shown)")
    args = parser.parse_args()
    wait_quiet(args.wait_quiet)
    peer_names = [p.strip() for p in args.peers.split(",") if p.strip()]

    work = workdir("bm2", args.keep)
    versions = ensure_peers(peer_names)
    report = Report("bm2_incremental", "BM-2 steady-state incremental pass (moto)", args.save)
    report.emit(machine_info(versions, ["s3"]))
    report.emit(f"bucket: {args.objects} objects of {args.object_size} B, then +{args.new} new per round; "
                f"rounds={args.repeat} (median); flexingest concurrency = rclone --transfers = {args.concurrency}")

    server = start_server("s3")
    peers = Peers("s3", server, work)
    store = new_store("s3", server, work)
    fill(store, ((key_name(i), payload(args.object_size, i)) for i in range(args.objects)), args.objects)
    bucket = store.bucket
    outs = {name: work / f"out-{name}" for name in ["flexingest", *peer_names]}
    pipeline = write_pipeline(work, "s3", connector_config(store), steps=[{"copy": {"url": str(outs["flexingest"])}}],
                              concurrency=args.concurrency)

    def run_tool(name: str, label: str) -> Measurement:
        out = outs[name]
        if name == "flexingest":
            return run_flexingest(label, pipeline, server=server, timeout=args.timeout)
        if name == "rclone":
            env, shown = peers.rclone_env()
            return measure(label, peers.rclone("copy", "--transfers", str(args.concurrency),
                                               peers.rclone_path(bucket), str(out)),
                           env=env, env_shown=shown, server=server, timeout=args.timeout)
        if name == "rclone-tuned":
            env, shown = peers.rclone_env()
            return measure(label, peers.rclone("copy", "--transfers", str(args.concurrency), "--fast-list",
                                               "--update", "--use-server-modtime",
                                               peers.rclone_path(bucket), str(out)),
                           env=env, env_shown=shown, server=server, timeout=args.timeout)
        if name == "aws":
            env, shown = peers.aws_env()
            return measure(label, peers.aws("s3", "sync", "--only-show-errors", f"s3://{bucket}", str(out)),
                           env=env, env_shown=shown, server=server, timeout=args.timeout)
        if name == "s5cmd":
            env, shown = peers.s5cmd_env()
            return measure(label, peers.s5("sync", f"s3://{bucket}/*", f"{out}/"), env=env, env_shown=shown,
                           server=server, timeout=args.timeout)
        raise SystemExit(f"unknown peer {name!r} (rclone, aws, s5cmd)")

    tools = ["flexingest", *peer_names]
    if "rclone" in tools:
        tools.insert(tools.index("rclone") + 1, "rclone-tuned")
        outs["rclone-tuned"] = work / "out-rclone-tuned"
    initial: dict[str, Measurement] = {}
    for name in tools:
        if name == "rclone-tuned":  # same tool, same folder state: a copy of rclone's synced folder
            shutil.copytree(outs["rclone"], outs[name], copy_function=shutil.copy2)
            continue
        log(f"initial sync: {name} ({args.objects} objects)")
        m = initial[name] = run_tool(name, f"{name} initial")
        if name == "flexingest":
            expect_counts(m, listed=args.objects, new=args.objects, done=args.objects, failed=0)
        have = count_files(outs[name])
        if have != args.objects:
            raise RuntimeError(f"{name}: the initial sync left {have} files, expected {args.objects}")

    rounds: dict[str, list[Measurement]] = {name: [] for name in tools}
    total = args.objects
    for r in range(max(1, args.repeat)):
        fill(store, ((key_name(i, prefix="new/"), payload(args.object_size, i))
                     for i in range(total, total + args.new)), args.new, label=f"+{args.new} new objects")
        total += args.new
        for name in tools:
            log(f"round {r + 1}: {name} incremental pass")
            m = run_tool(name, f"{name} +{args.new}")
            if name == "flexingest":
                expect_counts(m, listed=total, new=args.new, done=args.new, failed=0)
            have = count_files(outs[name])
            if have != total:
                raise RuntimeError(f"{name}: {have} files after the incremental pass, expected {total}")
            rounds[name].append(m)

    chosen = {name: sorted(ms, key=lambda m: m.wall)[(len(ms) - 1) // 2] for name, ms in rounds.items()}
    reference = chosen.get("rclone")
    rows = []
    for name in tools:
        m = chosen[name]
        in_pass = summary_counts(m).get("seconds") if name == "flexingest" else None
        first = fmt_s(initial[name].wall) if name in initial else "(= rclone's)"
        rows.append((name, first, fmt_s(m.wall), fmt_s(in_pass), fmt_mb(m.peak_rss),
                     fmt_s(m.cpu), fmt_s(m.server_cpu), fmt_s(m.others_cpu),
                     fmt_ratio(m.wall / reference.wall) if reference else "-"))
    report.table(f"{fmt_count(args.objects)} synced + {args.new} new (wall s; ratio: / rclone copy, "
                 f"target for flexingest <= {TARGET}x)",
                 ["tool", "initial sync s", "incremental s", "in-pass s", "peak RSS MiB", "CPU s",
                  "server CPU s", "others CPU s", "ratio"], rows)
    if reference:
        ratio = chosen["flexingest"].wall / reference.wall
        report.emit(f"flexingest / rclone copy = {ratio:.2f}x: target {'met' if ratio <= TARGET else 'NOT met'}")
    peers_only = [(n, m) for n, m in chosen.items() if n != "flexingest"]
    if peers_only:
        name, fastest = min(peers_only, key=lambda nm: nm[1].wall)
        report.emit(f"flexingest / fastest peer ({name}) = {chosen['flexingest'].wall / fastest.wall:.2f}x")
    report.emit("rclone-tuned: rclone copy --fast-list --update --use-server-modtime, which compares the "
                "listing's LastModified with the local mtime instead of reading each object's mtime "
                "metadata with a HEAD request (plain rclone copy on S3 does one HEAD per existing object).")
    report.emit("in-pass s: flexingest's own summary-line duration (without interpreter start-up and imports). "
                "server CPU s near the wall time means moto is the bottleneck.")
    report.noise([*initial.values(), *(m for ms in rounds.values() for m in ms)])
    report.commands([*initial.values(), *(m for ms in rounds.values() for m in ms)])

    if args.profile:
        fill(store, ((key_name(i, prefix="new/"), payload(args.object_size, i))
                     for i in range(total, total + args.new)), args.new, label=f"+{args.new} for the profile")
        report.emit("")
        report.emit("Profile: flexingest incremental pass")
        report.emit(py_spy_profile(flexingest_argv("run", pipeline, "--once"), env=clean_env(), cwd=work,
                                   timeout=args.timeout))
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
