"""BM-3: many small objects: a first pass with ``copy`` to a local folder, concurrency sweep.

Two moto buckets: ``--small-count`` objects of ``--small-size`` bytes (default 10k x 4 KiB) and
``--medium-count`` of ``--medium-size`` (default 1k x 256 KiB). For each concurrency of the sweep
(default 8,16,32,64) every tool copies the whole bucket into a fresh, empty local folder:

- flexingest: ``run --once`` with a ``copy`` step, sync ``concurrency: C`` (a fresh state file)
- rclone: ``rclone copy --transfers C``
- s5cmd: ``s5cmd --numworkers C cp 's3://bucket/*' DIR/``
- aws: ``aws s3 sync`` with ``max_concurrent_requests = C`` in its config file

Throughput: objects/s and MB/s (10^6 bytes/s) of payload.

    .venv/bin/python benchmarks/bm3_small_objects.py
    .venv/bin/python benchmarks/bm3_small_objects.py --small-count 2000 --concurrency 8,32

Targets (issue 6): >= 1.0 x rclone's throughput, >= 0.8 x s5cmd's.
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
    wait_quiet,
)
from _report import Report, fmt_count, fmt_mb, fmt_ratio, fmt_s, machine_info  # noqa: E402
from _setup import (  # noqa: E402
    PYTHON,
    KiB,
    base_parser,
    clean_env,
    connector_config,
    count_files,
    ensure_peers,
    fill,
    int_list,
    key_name,
    log,
    new_store,
    payload,
    start_server,
    workdir,
    write_pipeline,
)

FLOOR = str(Path(__file__).resolve().parent / "_floor_copy.py")
TARGET_RCLONE = 1.0
TARGET_S5CMD = 0.8


def human_size(n: int) -> str:
    return f"{n // KiB} KiB" if n % KiB == 0 else f"{n} B"


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--small-count", type=int, default=10_000)
    parser.add_argument("--small-size", type=int, default=4 * KiB)
    parser.add_argument("--medium-count", type=int, default=1_000, help="0 skips the 256 KiB set")
    parser.add_argument("--medium-size", type=int, default=256 * KiB)
    parser.add_argument("--concurrency", type=int_list, default=[8, 16, 32, 64], help="sweep (default 8,16,32,64)")
    parser.add_argument("--peers", default="rclone,s5cmd,aws", help="peers to run (default rclone,s5cmd,aws)")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip the diagnostic 'python floor' row (_floor_copy.py: s3fs async GETs alone)")
    args = parser.parse_args()
    wait_quiet(args.wait_quiet)
    peer_names = [p.strip() for p in args.peers.split(",") if p.strip()]

    work = workdir("bm3", args.keep)
    versions = ensure_peers(peer_names)
    report = Report("bm3_small_objects", "BM-3 many small objects: first pass with copy (moto)", args.save)
    report.emit(machine_info(versions, ["s3"]))
    report.emit(f"concurrency sweep: {','.join(map(str, args.concurrency))} (flexingest concurrency, rclone "
                f"--transfers, s5cmd --numworkers, aws max_concurrent_requests); one run per cell")

    server = start_server("s3")
    peers = Peers("s3", server, work)
    datasets = [(args.small_count, args.small_size)]
    if args.medium_count:
        datasets.append((args.medium_count, args.medium_size))

    all_runs: list[Measurement] = []
    best_rows = []
    profile_pipeline = None
    for count, size in datasets:
        store = new_store("s3", server, work)
        fill(store, ((key_name(i), payload(size, i)) for i in range(count)), count,
             chunk=max(50, min(2000, (64 * 1024 * 1024) // max(size, 1))))
        bucket = store.bucket
        payload_bytes = count * size
        rows = []
        results: dict[str, dict[int, Measurement]] = {}
        tools = ["flexingest", *peer_names, *(["python floor"] if args.floor else [])]
        for c in args.concurrency:
            for tool in tools:
                out = work / f"out-{tool.replace(' ', '-')}-{count}-{c}"
                label = f"{tool} {fmt_count(count)}x{human_size(size)} c={c}"
                log(label)
                if tool == "flexingest":
                    pipeline = write_pipeline(work, "s3", connector_config(store), steps=[{"copy": {"url": str(out)}}],
                                              name=f"bm3-{count}-{size}-{c}", concurrency=c)
                    m = run_flexingest(label, pipeline, server=server, timeout=args.timeout)
                    expect_counts(m, listed=count, new=count, done=count, failed=0)
                    if (count, size) == datasets[0] and c == max(args.concurrency):
                        profile_pipeline = (pipeline, out, f"{fmt_count(count)}x{human_size(size)} c={c}")
                elif tool == "rclone":
                    env, shown = peers.rclone_env()
                    m = measure(label, peers.rclone("copy", "--transfers", str(c), peers.rclone_path(bucket),
                                                    str(out)), env=env, env_shown=shown, server=server,
                                timeout=args.timeout)
                elif tool == "s5cmd":
                    env, shown = peers.s5cmd_env()
                    m = measure(label, peers.s5("--numworkers", str(c), "cp", f"s3://{bucket}/*", f"{out}/"),
                                env=env, env_shown=shown, server=server, timeout=args.timeout)
                elif tool == "python floor":
                    m = measure(label, [PYTHON, FLOOR, server.url, bucket, out, c], env=clean_env(), server=server,
                                timeout=args.timeout)
                elif tool == "aws":
                    env, shown = peers.aws_env(concurrency=c)
                    m = measure(label, peers.aws("s3", "sync", "--only-show-errors", f"s3://{bucket}", str(out)),
                                env=env, env_shown=shown, server=server, timeout=args.timeout)
                else:
                    raise SystemExit(f"unknown peer {tool!r} (rclone, s5cmd, aws)")
                have = count_files(out)
                if have != count:
                    raise RuntimeError(f"{label}: {have} files copied, expected {count}")
                shutil.rmtree(out, ignore_errors=True)
                results.setdefault(tool, {})[c] = m
                all_runs.append(m)
        for c in args.concurrency:
            for tool in tools:
                m = results[tool][c]
                rclone = results.get("rclone", {}).get(c)
                s5 = results.get("s5cmd", {}).get(c)
                rows.append((tool, c, fmt_s(m.wall), f"{count / m.wall:,.0f}", f"{payload_bytes / m.wall / 1e6:.1f}",
                             fmt_mb(m.peak_rss), fmt_s(m.cpu), fmt_s(m.server_cpu), fmt_s(m.others_cpu),
                             fmt_ratio(rclone.wall / m.wall) if rclone else "-",
                             fmt_ratio(s5.wall / m.wall) if s5 else "-"))
        report.table(f"{fmt_count(count)} objects x {human_size(size)} ({payload_bytes / 1e6:.0f} MB): first pass "
                     f"into an empty folder (x rclone / x s5cmd: throughput relative to theirs at the same "
                     f"concurrency)",
                     ["tool", "conc.", "wall s", "objects/s", "MB/s", "peak RSS MiB", "CPU s", "server CPU s",
                      "others CPU s", "x rclone", "x s5cmd"], rows, "lrrrrrrrrrr")
        best = {tool: min(runs.values(), key=lambda m: m.wall) for tool, runs in results.items()
                if tool != "python floor"}
        best_c = {tool: next(c for c, m in results[tool].items() if m is best[tool]) for tool in best}
        flex = best["flexingest"]
        r_rclone = best["rclone"].wall / flex.wall if "rclone" in best else None
        r_s5 = best["s5cmd"].wall / flex.wall if "s5cmd" in best else None
        best_rows.append((f"{fmt_count(count)} x {human_size(size)}",
                          f"{count / flex.wall:,.0f} (c={best_c['flexingest']})",
                          *(f"{count / best[t].wall:,.0f} (c={best_c[t]})" for t in peer_names),
                          fmt_ratio(r_rclone), "yes" if r_rclone and r_rclone >= TARGET_RCLONE else "NO",
                          fmt_ratio(r_s5), "yes" if r_s5 and r_s5 >= TARGET_S5CMD else "NO"))
    report.table(f"Best of the sweep, objects/s (targets: flexingest >= {TARGET_RCLONE} x rclone, "
                 f">= {TARGET_S5CMD} x s5cmd)",
                 ["dataset", "flexingest", *peer_names, "x rclone", "met", "x s5cmd", "met"], best_rows,
                 "l" + "r" * (len(peer_names) + 5))
    report.emit("server CPU s close to wall s: moto (one Python process) is saturated and bounds every tool. "
                "On 2 cores, client CPU + server CPU + others CPU ~ 2 x wall means the machine is saturated: "
                "the client's CPU per object then sets the pace.")
    if args.floor:
        report.emit("python floor (diagnostic, not a peer): _floor_copy.py, the same s3fs/aiobotocore stack driven "
                    "from one event loop with C GETs in flight and plain file writes: what flexingest could reach "
                    "on this stack with no per-object overhead of its own.")
    report.noise(all_runs)
    report.commands(all_runs)

    if args.profile and profile_pipeline:
        pipeline, out, title = profile_pipeline
        # A fresh state and output: the profiled run does the same first pass again.
        for leftover in (pipeline.parent / ".flexingest").glob(f"{pipeline.stem}.db*"):
            leftover.unlink()
        shutil.rmtree(out, ignore_errors=True)
        report.emit("")
        report.emit(f"Profile: flexingest first pass, {title}")
        report.emit(py_spy_profile(flexingest_argv("run", pipeline, "--once"), env=clean_env(), cwd=work,
                                   timeout=args.timeout))
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
