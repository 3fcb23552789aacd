"""BM-7: CPU of the read path per listed key and per small GET, by client (issue 16).

On moto (S3) and Azurite, in one run: one bucket per server with ``--list-count`` tiny
objects under ``l/`` and ``--get-count`` objects of ``--get-size`` bytes under ``g/``. Then,
each in its own process, measured as CPU seconds of the client process:

- listing ``l/``: flexingest's fsspec storage (``Storage.iter_pages`` over s3fs / adlfs),
  what ``open_connector`` opens now, obstore ``list`` (chunks of 1000); ``rclone lsf -R``;
  ``s5cmd ls`` (S3)
- reading every object of ``g/`` whole, ``--concurrency`` at a time: the fsspec storage's
  ``read_versioned`` from threads, ``open_connector``'s, obstore ``get`` from threads,
  obstore ``get_async`` on one event loop; ``rclone copy --transfers C``, ``s5cmd cp``
  (both also list the prefix and write the files: their rows show the whole process, and
  the same figure less their own listing of ``g/``)

For the Python clients the table shows the CPU of the measured operation alone (inside the
process: ``time.process_time``) and of the whole process (interpreter start-up and imports
included). ms per 1,000 keys and per GET are computed from the operation alone for Python
and from the whole process for the Go peers (which start in milliseconds).

    .venv/bin/python benchmarks/bm7_read_path.py --wait-quiet 60
    .venv/bin/python benchmarks/bm7_read_path.py --backends s3 --list-count 2000 --get-count 500
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import Measurement, Peers, measure, wait_quiet  # noqa: E402
from _report import Report, fmt_count, machine_info  # noqa: E402
from _setup import (  # noqa: E402
    PYTHON,
    SERVER_NAMES,
    base_parser,
    clean_env,
    connector_config,
    count_files,
    ensure_peers,
    fill,
    key_name,
    kinds_list,
    log,
    new_store,
    noop_steps,
    payload,
    start_server,
    workdir,
    write_pipeline,
)

CLIENT = str(Path(__file__).resolve().parent / "_read_path_client.py")
PYTHON_CLIENTS = {"list": ["fsspec", "flexingest", "obstore"],
                  "get": ["fsspec", "flexingest", "obstore", "obstore_async"]}
LABELS = {"fsspec": "fsspec storage (s3fs/adlfs)", "flexingest": "flexingest open_connector",
          "obstore": "obstore", "obstore_async": "obstore get_async, one loop"}


def median_cpu(runs: list[tuple[Measurement, float | None]]) -> tuple[Measurement, float | None]:
    ordered = sorted(runs, key=lambda r: r[1] if r[1] is not None else r[0].cpu)
    return ordered[(len(ordered) - 1) // 2]


def run_backend(kind: str, args: Any, work: Path, rows: list[tuple[str, ...]],
                measurements: list[Measurement]) -> None:
    """Every row of one server."""
    server = start_server(kind)
    peers = Peers(kind, server, work)
    store = new_store(kind, server, work)
    fill(store, ((key_name(i, prefix="l/"), payload(64, i)) for i in range(args.list_count)), args.list_count)
    fill(store, ((key_name(i, prefix="g/"), payload(args.get_size, i)) for i in range(args.get_count)),
         args.get_count)
    folder = work / kind
    folder.mkdir(parents=True, exist_ok=True)
    pipeline = write_pipeline(folder, kind, connector_config(store), steps=noop_steps(folder))
    where = SERVER_NAMES[kind]

    def python_row(client: str, op: str) -> None:
        n = args.list_count if op == "list" else args.get_count
        prefix = "l/" if op == "list" else "g/"
        runs = []
        for _ in range(args.repeat):
            m = measure(f"{where} {client} {op}", [PYTHON, CLIENT, f"{client}-{op}", pipeline, prefix,
                                                   args.concurrency], env=clean_env(), server=server,
                        timeout=args.timeout)
            out = json.loads(m.stdout.strip().splitlines()[-1])
            if out["keys"] != n:
                raise RuntimeError(f"{m.label}: {out['keys']} keys, expected {n}")
            runs.append((m, float(out["cpu"])))
        m, op_cpu = median_cpu(runs)
        measurements.extend(r[0] for r in runs)
        per = 1000 * (op_cpu or 0) / n * (1000 if op == "list" else 1)
        rows.append((where, op, LABELS[client], fmt_count(n), f"{op_cpu:.3f}", f"{m.cpu:.3f}",
                     f"{m.server_cpu or 0:.2f}", f"{per:.2f}"))

    def peer_row(label: str, op: str, argv: list[str], env: dict[str, str], shown: dict[str, str],
                 listing_cpu: float = 0.0, out: Path | None = None) -> float:
        n = args.list_count if op == "list" else args.get_count
        runs = []
        for _ in range(args.repeat):
            m = measure(f"{where} {label}", argv, env=env, env_shown=shown, server=server, timeout=args.timeout)
            if out is not None:
                if count_files(out) != n:
                    raise RuntimeError(f"{label}: {count_files(out)} files, expected {n}")
                shutil.rmtree(out, ignore_errors=True)
            elif m.stdout_lines() != n:
                raise RuntimeError(f"{label}: {m.stdout_lines()} lines, expected {n}")
            runs.append((m, None))
        m = median_cpu(runs)[0]
        measurements.extend(r[0] for r in runs)
        cpu = m.cpu - listing_cpu
        per = 1000 * cpu / n * (1000 if op == "list" else 1)
        shown_label = label + (" (less its listing)" if listing_cpu else "")
        rows.append((where, op, shown_label, fmt_count(n), "-", f"{m.cpu:.3f}", f"{m.server_cpu or 0:.2f}",
                     f"{per:.2f}"))
        return m.cpu

    for op in ("list", "get"):
        for client in PYTHON_CLIENTS[op]:
            if args.only is None or client in args.only:
                log(f"{where}: {client} {op}")
                python_row(client, op)
        env, shown = peers.rclone_env()
        src = peers.rclone_path(store.bucket)
        if op == "list":
            peer_row("rclone lsf -R", op, peers.rclone("lsf", "-R", "--files-only", f"{src}/l"), env, shown)
            if kind == "s3":
                e5, s5 = peers.s5cmd_env()
                peer_row("s5cmd ls", op, peers.s5("ls", f"s3://{store.bucket}/l/*"), e5, s5)
        else:
            out = work / "out"
            listing = statistics.median(measure("rclone lsf g/", peers.rclone(
                "lsf", "-R", "--files-only", f"{src}/g"), env=env, server=server).cpu for _ in range(args.repeat))
            peer_row(f"rclone copy --transfers {args.concurrency}", op,
                     peers.rclone("copy", "--transfers", str(args.concurrency), f"{src}/g", str(out)),
                     env, shown, listing, out)
            if kind == "s3":
                e5, s5 = peers.s5cmd_env()
                listing = statistics.median(measure("s5cmd ls g/", peers.s5("ls", f"s3://{store.bucket}/g/*"),
                                                    env=e5, server=server).cpu for _ in range(args.repeat))
                peer_row(f"s5cmd cp --numworkers {args.concurrency}", op,
                         peers.s5("--numworkers", str(args.concurrency), "cp", f"s3://{store.bucket}/g/*",
                                  f"{out}/"), e5, s5, listing, out)
    server.stop()


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--backends", type=kinds_list, default=["s3", "azure_blob"], help="s3,azure (default both)")
    parser.add_argument("--list-count", type=int, default=10_000)
    parser.add_argument("--get-count", type=int, default=2_000)
    parser.add_argument("--get-size", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (the median CPU is shown)")
    parser.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], default=None,
                        help="Python clients to run (default all): fsspec,flexingest,obstore,obstore_async")
    args = parser.parse_args()
    wait_quiet(args.wait_quiet)
    work = workdir("bm7", args.keep)
    versions = ensure_peers(("rclone", "s5cmd"))
    report = Report("bm7_read_path", "BM-7 read path: CPU per listed key and per small GET", args.save)
    report.emit(machine_info(versions, args.backends))
    report.emit(f"list: {args.list_count} keys; get: {args.get_count} x {args.get_size} B at concurrency "
                f"{args.concurrency}; repeat {args.repeat} (median CPU)")
    rows: list[tuple[str, ...]] = []
    measurements: list[Measurement] = []
    for kind in args.backends:
        run_backend(kind, args, work, rows, measurements)

    report.table("CPU of the client (op CPU s: the operation alone, inside the process; process CPU s: the whole "
                 "process; ms per: per 1,000 keys listed, or per GET)",
                 ["server", "op", "client", "N", "op CPU s", "process CPU s", "server CPU s", "ms CPU per"], rows,
                 "lllrrrrr")
    report.noise(measurements)
    report.commands(measurements)
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
