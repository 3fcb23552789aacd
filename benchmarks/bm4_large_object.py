"""BM-4: one large object through ``copy``: time and peak RSS vs rclone copy / s5cmd cp.

A moto bucket with one object of ``--size-mb`` MiB (default 2048; several sizes, e.g.
``--size-mb 256,1024``, show whether memory grows with the object), uploaded as a multipart
object in 64 MiB parts streamed from a generator (the benchmark itself never holds it). Each
tool copies it to a fresh local folder:

- flexingest: ``run --once`` with a ``copy`` step (the object is streamed: it never holds it whole)
- rclone: ``rclone copy``; s5cmd: ``s5cmd cp``; aws: ``aws s3 cp`` (add with ``--peers``)

    .venv/bin/python benchmarks/bm4_large_object.py
    .venv/bin/python benchmarks/bm4_large_object.py --size-mb 512

Target (issue 6): flexingest's peak RSS under 200 MB, independent of the object's size.
"""

from __future__ import annotations

import os
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
from _report import Report, fmt_mb, fmt_ratio, fmt_s, machine_info  # noqa: E402
from _setup import (  # noqa: E402
    MiB,
    base_parser,
    clean_env,
    connector_config,
    ensure_peers,
    int_list,
    log,
    new_store,
    start_server,
    workdir,
    write_pipeline,
)

TARGET_RSS = 200 * MiB
PART = 64 * MiB
KEY = "large/object.bin"


def upload(store, size: int) -> float:
    """Stream ``size`` bytes into ``KEY`` (multipart, 64 MiB parts), never holding them whole."""
    import time

    started = time.perf_counter()
    block = os.urandom(MiB)
    written = 0
    with store.fs.open(store.path(KEY), "wb", block_size=PART) as f:
        while written < size:
            n = min(MiB, size - written)
            f.write(block[:n] if n < MiB else block)
            written += n
            if written % (256 * MiB) == 0 or written == size:
                log(f"uploading {KEY}: {written // MiB}/{size // MiB} MiB")
    store.fs.invalidate_cache()
    return time.perf_counter() - started


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--size-mb", type=int_list, default=[2048], help="object size(s) in MiB (default 2048)")
    parser.add_argument("--peers", default="rclone,s5cmd", help="peers to run (default rclone,s5cmd; aws possible)")
    args = parser.parse_args()
    wait_quiet(args.wait_quiet)
    peer_names = [p.strip() for p in args.peers.split(",") if p.strip()]

    work = workdir("bm4", args.keep)
    versions = ensure_peers(peer_names)
    report = Report("bm4_large_object", "BM-4 one large object through copy (moto)", args.save)
    report.emit(machine_info(versions, ["s3"]))
    server = start_server("s3")
    peers = Peers("s3", server, work)

    rows = []
    runs: list[Measurement] = []
    profile = None
    for size_mb in args.size_mb:
        size = size_mb * MiB
        store = new_store("s3", server, work)
        seconds = upload(store, size)
        report.emit(f"{size_mb} MiB object uploaded to moto in {seconds:.1f}s (multipart, {PART // MiB} MiB parts)")
        results: dict[str, Measurement] = {}
        for tool in ["flexingest", *peer_names]:
            out = work / f"out-{tool}-{size_mb}"
            label = f"{tool} {size_mb} MiB"
            log(label)
            if tool == "flexingest":
                pipeline = write_pipeline(work, "s3", connector_config(store), steps=[{"copy": {"url": str(out)}}],
                                          name=f"bm4-{size_mb}", concurrency=1)
                m = run_flexingest(label, pipeline, server=server, timeout=args.timeout)
                expect_counts(m, listed=1, new=1, done=1, failed=0)
                profile = (pipeline, out, size_mb)
            elif tool == "rclone":
                env, shown = peers.rclone_env()
                m = measure(label, peers.rclone("copy", f"{peers.rclone_path(store.bucket)}/{KEY}", str(out / "large")),
                            env=env, env_shown=shown, server=server, timeout=args.timeout)
            elif tool == "s5cmd":
                env, shown = peers.s5cmd_env()
                m = measure(label, peers.s5("cp", f"s3://{store.bucket}/{KEY}", f"{out}/{KEY}"),
                            env=env, env_shown=shown, server=server, timeout=args.timeout)
            elif tool == "aws":
                env, shown = peers.aws_env()
                m = measure(label, peers.aws("s3", "cp", "--only-show-errors", f"s3://{store.bucket}/{KEY}",
                                             f"{out}/{KEY}"),
                            env=env, env_shown=shown, server=server, timeout=args.timeout)
            else:
                raise SystemExit(f"unknown peer {tool!r} (rclone, s5cmd, aws)")
            got = (out / KEY).stat().st_size if (out / KEY).exists() else -1
            if got != size:
                raise RuntimeError(f"{label}: copied {got} bytes, expected {size}")
            shutil.rmtree(out, ignore_errors=True)
            results[tool] = m
            runs.append(m)
        fastest = min((m for t, m in results.items() if t != "flexingest"), key=lambda m: m.wall, default=None)
        for tool, m in results.items():
            rows.append((f"{size_mb} MiB", tool, fmt_s(m.wall), f"{size / m.wall / 1e6:.0f}", fmt_mb(m.peak_rss),
                         fmt_s(m.cpu), fmt_s(m.server_cpu), fmt_s(m.others_cpu),
                         fmt_ratio(m.wall / fastest.wall) if fastest else "-",
                         ("yes" if m.peak_rss < TARGET_RSS else "NO") if tool == "flexingest" else ""))
    report.table("One object, copied to an empty local folder (ratio: wall / fastest peer; "
                 f"target: flexingest peak RSS < {TARGET_RSS // MiB} MiB)",
                 ["size", "tool", "wall s", "MB/s", "peak RSS MiB", "CPU s", "server CPU s", "others CPU s", "ratio",
                  "RSS target"], rows, "llrrrrrrrl")
    report.emit("server CPU s close to wall s: moto is the bottleneck for every tool.")
    report.noise(runs)
    report.commands(runs)
    if args.profile and profile:
        pipeline, out, size_mb = profile
        for leftover in (pipeline.parent / ".flexingest").glob(f"{pipeline.stem}.db*"):
            leftover.unlink()
        report.emit("")
        report.emit(f"Profile: flexingest copy of the {size_mb} MiB object")
        report.emit(py_spy_profile(flexingest_argv("run", pipeline, "--once"), env=clean_env(), cwd=work,
                                   timeout=args.timeout))
        shutil.rmtree(out, ignore_errors=True)
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
