"""BM-9: bucket events (issue 15): latency from upload to ``done`` through S3 -> SQS on moto.

For each rate of ``--rates`` (objects/s, default 10,100), ``--repeat`` times: a fresh moto
bucket whose ``s3:ObjectCreated:*`` notifications go to a fresh SQS queue
(``put_bucket_notification_configuration``); the service ``flexingest run P`` with a sync
whose reconciliation is ``schedule: {every: 6h}`` and ``events: {type: sqs, queue_url: ...,
wait: 1s}``, and a ``write_json`` step into a local folder. Once its backfill listing is done
and it consumes the queue, a separate process (boto3, a few threads) uploads ``--size``-byte
objects at a steady rate for ``--duration`` seconds and notes when each PUT returned. The
latency of an object is its ``processed_at`` in the state file (``objects`` table: the time
of the commit that recorded it ``done``) minus that time. The CPU of the flexingest process
over the upload (minus its idle rate while it long-polls an empty queue) per object, and
moto's, are reported too.

Then, on paper, from the figures measured here (``--list-keys`` objects listed by unchanged
passes on the same moto): what events save on a 1 M-key bucket with 1,000 new objects a day,
listing every 5 minutes versus events plus one reconciliation a day.

    .venv/bin/python benchmarks/bm9_events.py --wait-quiet 120 --save
    .venv/bin/python benchmarks/bm9_events.py --rates 10 --duration 20 --repeat 1
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import cpu_seconds, expect_counts, summary_counts, system_busy_seconds, wait_quiet  # noqa: E402
from _report import Report, machine_info  # noqa: E402
from _setup import (  # noqa: E402
    FLEXINGEST,
    PYTHON,
    base_parser,
    clean_env,
    connector_config,
    fill,
    int_list,
    key_name,
    log,
    new_store,
    noop_steps,
    payload,
    start_server,
    workdir,
    write_pipeline,
)
from _tree import measure_tree as measure  # noqa: E402
from _tree import med, spread  # noqa: E402

KEYS_1M = 1_000_000
NEW_PER_DAY = 1_000
EVERY_5M = 24 * 60 // 5  # listings a day
SQS_LONG_POLL = 20  # seconds: events' default wait


# =========================================================================== uploader (child process)


def upload_child(endpoint: str, bucket: str, rate: float, duration: float, size: int, out: str) -> None:
    """PUT objects at ``rate`` per second for ``duration`` s (each on its schedule, 4 threads);
    writes [[key, scheduled, returned], ...] (time.time()) to ``out``."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    body = os.urandom(size)
    count = int(rate * duration)
    done: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def put(i: int, scheduled: float) -> None:
        key = f"ev/{i:06d}.bin"
        client.put_object(Bucket=bucket, Key=key, Body=i.to_bytes(8, "little") + body[8:])
        returned = time.time()
        with lock:
            done.append((key, scheduled, returned))

    start = time.time() + 0.2
    with ThreadPoolExecutor(max_workers=4) as pool:
        for i in range(count):
            scheduled = start + i / rate
            delay = scheduled - time.time()
            if delay > 0:
                time.sleep(delay)
            pool.submit(put, i, scheduled)
    Path(out).write_text(json.dumps(done))


# =========================================================================== measuring


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def done_rows(state: Path) -> dict[str, float]:
    """key -> processed_at (epoch seconds) of objects recorded done."""
    if not state.exists():
        return {}
    db = sqlite3.connect(f"{state.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT key, processed_at FROM objects WHERE status = 'done'").fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
    return {k: epoch(t) for k, t in rows if t}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[index]


def one_run(label: str, server: Any, work: Path, rate: float, duration: float, size: int,
            idle_seconds: float, concurrency: int) -> dict[str, Any]:
    import boto3

    store = new_store("s3", server, work)
    sqs = boto3.client("sqs", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    s3 = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    queue = sqs.create_queue(QueueName=f"bm9-{store.bucket}"[:80])["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=store.bucket, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    folder = work / f"rate{rate:g}-{len(list(work.glob('rate*')))}"
    out = folder / "out"
    pipeline = write_pipeline(folder, "s3", connector_config(store), name="events",
                              steps=[{"write_json": {"url": str(out)}}], schedule={"every": "6h"},
                              concurrency=concurrency,
                              events={"type": "sqs", "queue_url": queue, "wait": "1s"})
    state = folder / ".flexingest" / "events.db"
    err_path = folder / "service.err"
    with open(err_path, "wb") as err:
        service = subprocess.Popen([FLEXINGEST, "run", str(pipeline)], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=err, env=clean_env(), cwd=folder)
    try:
        deadline = time.monotonic() + 60
        while "consuming" not in err_path.read_text(errors="replace"):
            if service.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{label}: the service did not start consuming:\n{err_path.read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(2.0)  # the test event is received and acknowledged
        cpu0, moto0 = cpu_seconds(service.pid), cpu_seconds(server.process.pid)
        time.sleep(idle_seconds)
        idle_rate = (cpu_seconds(service.pid) - cpu0) / idle_seconds
        idle_moto = (cpu_seconds(server.process.pid) - moto0) / idle_seconds
        uploads = folder / "uploads.json"
        cpu1, moto1, busy1 = cpu_seconds(service.pid), cpu_seconds(server.process.pid), system_busy_seconds()
        started = time.time()
        uploader = subprocess.Popen([PYTHON, __file__, "--upload-child", server.url, store.bucket, str(rate),
                                     str(duration), str(size), str(uploads)], env=clean_env())
        expected = int(rate * duration)
        deadline = time.monotonic() + max(600.0, 10 * duration)
        while True:
            have = done_rows(state)
            if uploader.poll() is not None and uploads.exists() and sum(k.startswith("ev/") for k in have) >= expected:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: only {len(have)} of {expected} objects done after "
                                   f"{max(600.0, 10 * duration):.0f}s:\n{err_path.read_text()[-2000:]}")
            time.sleep(0.2)
        finished = time.time()
        window = finished - started
        cpu = cpu_seconds(service.pid) - cpu1
        moto = cpu_seconds(server.process.pid) - moto1
        busy = system_busy_seconds() - busy1
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=60)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
    times = {k: returned for k, _, returned in json.loads(uploads.read_text())}
    behind = max(returned - scheduled for _, scheduled, returned in json.loads(uploads.read_text()))
    upload_span = max(times.values()) - min(times.values())
    have = done_rows(state)
    latencies = [have[k] - t for k, t in times.items()]
    mtimes = [os.stat(out / f"{k}.json").st_mtime - t for k, t in times.items()]
    text = err_path.read_text(errors="replace")
    listings = text.count("bench: listed ") - 1  # after the backfill
    events_lines = text.count("bench: events: ")
    return {"label": label, "rate": rate, "objects": len(times), "achieved": (len(times) - 1) / upload_span,
            "p50": percentile(latencies, 50), "p95": percentile(latencies, 95), "max": max(latencies),
            "p50_file": percentile(mtimes, 50), "max_file": max(mtimes), "behind": behind,
            "cpu": cpu, "idle_rate": idle_rate, "idle_moto": idle_moto, "window": window, "moto": moto,
            "busy": busy, "listings": listings, "event_batches": events_lines,
            "cpu_per_object": (cpu - idle_rate * window) / len(times), "moto_per_object": moto / len(times)}


def per_batch_fit(runs: list[dict[str, Any]]) -> tuple[float, float] | None:
    """(CPU s per event batch, CPU s per object) that best explain the runs (least squares)."""
    rows = [(x["event_batches"], x["objects"], x["cpu"] - x["idle_rate"] * x["window"]) for x in runs]
    saa = sum(a * a for a, _, _ in rows)
    sab = sum(a * b for a, b, _ in rows)
    sbb = sum(b * b for _, b, _ in rows)
    say = sum(a * y for a, _, y in rows)
    sby = sum(b * y for _, b, y in rows)
    det = saa * sbb - sab * sab
    if len(rows) < 2 or abs(det) < 1e-9:
        return None
    return (say * sbb - sby * sab) / det, (saa * sby - sab * say) / det


def moto_costs(server: Any, work: Path) -> list[tuple[str, float, float]]:
    """(operation, moto CPU ms, wall ms) of the requests one event costs, on this moto: what bounds
    the rates here. SQS's receive is measured at two queue depths (moto scans the whole queue)."""
    import boto3

    kw = {"endpoint_url": server.url, "region_name": "us-east-1", "aws_access_key_id": "testing",
          "aws_secret_access_key": "testing"}
    s3, sqs = boto3.client("s3", **kw), boto3.client("sqs", **kw)
    plain, notified = new_store("s3", server, work).bucket, new_store("s3", server, work).bucket
    queue = sqs.create_queue(QueueName=f"bm9-costs-{notified}"[:80])["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=notified, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    body = os.urandom(1024)
    out = []

    def cost(label: str, n: int, fn: Any) -> None:
        cpu0, t0 = cpu_seconds(server.process.pid), time.perf_counter()
        for i in range(n):
            fn(i)
        out.append((label, 1000 * (cpu_seconds(server.process.pid) - cpu0) / n, 1000 * (time.perf_counter() - t0) / n))

    cost("PUT 1 KiB, bucket without notifications", 200, lambda i: s3.put_object(Bucket=plain, Key=f"k{i}", Body=body))
    cost("PUT 1 KiB, bucket notifying the queue", 200,
         lambda i: s3.put_object(Bucket=notified, Key=f"k{i}", Body=body))
    cost("HEAD", 200, lambda i: s3.head_object(Bucket=plain, Key=f"k{i}"))
    cost("GET 1 KiB", 200, lambda i: s3.get_object(Bucket=plain, Key=f"k{i}")["Body"].read())
    handles: list[str] = []

    def receive(i: int) -> None:
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        handles.extend(m["ReceiptHandle"] for m in got)

    cost("SQS receive of 10, ~200 messages queued", 5, receive)
    for i in range(200, 1000):
        s3.put_object(Bucket=notified, Key=f"k{i}", Body=body)
    cost("SQS receive of 10, ~1,000 messages queued", 5, receive)
    cost("SQS delete_message_batch of 10", 5, lambda i: sqs.delete_message_batch(QueueUrl=queue, Entries=[
        {"Id": str(j), "ReceiptHandle": handles.pop()} for j in range(10)]))
    return out


def listing_cost(server: Any, work: Path, keys: int, repeat: int, report_runs: list[Any]) -> dict[str, float]:
    """CPU and wall of listing + diff per 1,000 keys on this moto (unchanged passes, N vs empty)."""
    store = new_store("s3", server, work)
    fill(store, ((key_name(i), payload(64, i)) for i in range(keys)), keys)
    empty = new_store("s3", server, work)
    full_p = write_pipeline(work, "s3", connector_config(store), name="list-full", steps=noop_steps(work))
    empty_p = write_pipeline(work, "s3", connector_config(empty), name="list-empty", steps=noop_steps(work))
    env = clean_env()
    argv = [FLEXINGEST, "run"]
    first = measure("first pass (list)", [*argv, full_p, "--once"], env=env, cwd=work, server=server)
    expect_counts(first, new=keys)  # type: ignore[arg-type]
    fulls, empties = [], []
    for r in range(repeat):
        fulls.append(measure(f"unchanged {keys} #{r + 1}", [*argv, full_p, "--once"], env=env, cwd=work,
                             server=server))
        empties.append(measure(f"unchanged empty #{r + 1}", [*argv, empty_p, "--once"], env=env, cwd=work,
                               server=server))
    report_runs += fulls + empties
    for m in fulls:
        expect_counts(m, listed=keys, new=0)  # type: ignore[arg-type]
    k = keys / 1000
    return {"cpu": (med([m.cpu for m in fulls]) - med([m.cpu for m in empties])) / k,
            "wall": (med([m.wall for m in fulls]) - med([m.wall for m in empties])) / k,
            "in_pass": med([summary_counts(m).get("seconds", 0.0) for m in fulls]) / k,
            "moto": (med([m.server_cpu or 0 for m in fulls]) - med([m.server_cpu or 0 for m in empties])) / k,
            "empty_cpu": med([m.cpu for m in empties]), "empty_wall": med([m.wall for m in empties]),
            "keys": keys, "full_wall": med([m.wall for m in fulls]), "full_cpu": med([m.cpu for m in fulls])}


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "--upload-child":
        endpoint, bucket, rate, duration, size, out = sys.argv[2:8]
        upload_child(endpoint, bucket, float(rate), float(duration), int(size), out)
        return 0
    parser = base_parser(__doc__)
    parser.add_argument("--rates", type=int_list, default=[10, 100], help="uploads per second (default 10,100)")
    parser.add_argument("--duration", type=float, default=30, help="seconds of uploads per run (default 30)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per rate (default 3)")
    parser.add_argument("--size", type=int, default=1024, help="bytes per object (default 1024)")
    parser.add_argument("--concurrency", type=int, default=8, help="the sync's concurrency (default 8)")
    parser.add_argument("--idle", type=float, default=10, help="seconds the idle service is measured (default 10)")
    parser.add_argument("--list-keys", type=int, default=5000,
                        help="keys for the listing cost used on paper (default 5000; 0 skips it)")
    args = parser.parse_args()
    busy = wait_quiet(args.wait_quiet)
    work = workdir("bm9", args.keep)
    report = Report("bm9_events", "BM-9 bucket events: S3 -> SQS on moto, upload to done (issue 15)", args.save)
    report.emit(machine_info(servers_=["s3"]))
    report.emit(f"machine busy before the run: {busy:.2f} cores used by other processes (--wait-quiet "
                f"{args.wait_quiet:g})")
    server = start_server("s3")
    runs: list[dict[str, Any]] = []
    for r in range(args.repeat):
        for rate in args.rates:
            label = f"{rate}/s #{r + 1}"
            log(f"events at {label}: {int(rate * args.duration)} uploads over {args.duration:g}s")
            runs.append(one_run(label, server, work, rate, args.duration, args.size, args.idle, args.concurrency))
            res = runs[-1]
            log(f"  p50 {res['p50']:.2f}s p95 {res['p95']:.2f}s max {res['max']:.2f}s, "
                f"{1000 * res['cpu_per_object']:.2f} ms CPU/object")
    rows = []
    for rate in args.rates:
        rs = [x for x in runs if x["rate"] == rate]

        def s(key: str, fmt: str = "{:.2f}", scale: float = 1.0) -> str:
            return spread([scale * x[key] for x in rs], fmt)  # noqa: B023

        rows.append((rate, s("achieved", "{:.1f}"), s("objects", "{:.0f}"), s("p50"), s("p95"), s("max"),
                     s("p50_file"), s("cpu_per_object", scale=1000), s("idle_rate", "{:.3f}"),
                     s("moto_per_object", scale=1000), s("busy", scale=1 / max(1e-9, med([x["window"] for x in rs]))),
                     s("listings", "{:.0f}")))
    report.table(f"Upload to done (processed_at in the state) through S3 -> SQS, the service with events "
                 f"(wait 1s, concurrency {args.concurrency}) and write_json; {args.size}-byte objects for "
                 f"{args.duration:g}s per run; median [min-max] of {args.repeat}",
                 ["rate/s", "achieved/s", "objects", "p50 s", "p95 s", "max s", "p50 s (output file mtime)",
                  "flexingest CPU ms/object", "idle CPU cores", "moto CPU ms/object", "cores busy (all)",
                  "listings after the backfill"], rows)
    report.emit("CPU ms/object: the flexingest process's CPU over the upload window (from the first upload to the "
                "last object done) minus its idle rate (long-polling an empty queue, measured just before), per "
                "object. cores busy: every process of the machine over the window (the uploader, moto and "
                "flexingest included). Each upload's time is when its PUT returned.")
    for x in runs:
        report.emit(f"  {x['label']}: {x['objects']} objects, {x['event_batches']} event batches processed, uploads "
                    f"at most {x['behind']:.2f}s behind schedule, window {x['window']:.1f}s, flexingest "
                    f"{x['cpu']:.2f} s CPU, moto {x['moto']:.2f} s CPU, all processes {x['busy']:.2f} s")

    fit = per_batch_fit(runs)
    if fit:
        report.emit(f"least squares over the runs: flexingest CPU (idle removed) = {1000 * fit[0]:.1f} ms per event "
                    f"batch (one receive: the state opened, the steps built, a listing table, a commit, the "
                    f"acknowledgement) + {1000 * fit[1]:.2f} ms per object")
    report.table("moto's own cost per request here (one client, sequential; what bounds the rates above)",
                 ["request", "moto CPU ms", "wall ms"],
                 [(label, f"{cpu:.1f}", f"{wall:.1f}") for label, cpu, wall in moto_costs(server, work)])
    listing_runs: list[Any] = []
    if args.list_keys:
        log(f"listing cost: {args.list_keys} keys")
        cost = listing_cost(server, work, args.list_keys, args.repeat, listing_runs)
        report.table(f"Listing + diff cost on this moto (unchanged pass over {cost['keys']} keys minus one over an "
                     "empty bucket), per 1,000 keys",
                     ["flexingest CPU ms", "wall ms", "in-pass ms", "moto CPU ms", "empty pass: CPU s", "wall s"],
                     [(f"{1000 * cost['cpu']:.1f}", f"{1000 * cost['wall']:.1f}", f"{1000 * cost['in_pass']:.1f}",
                       f"{1000 * cost['moto']:.1f}", f"{cost['empty_cpu']:.2f}", f"{cost['empty_wall']:.2f}")])
        per_obj = med([x["cpu_per_object"] for x in runs if x["rate"] == min(args.rates)])
        idle = med([x["idle_rate"] for x in runs])
        pages = KEYS_1M // 1000
        five = EVERY_5M * pages
        daily = pages
        receives = 86400 // SQS_LONG_POLL
        rows = [
            ("listing every 5 min", f"{five:,}", "0", f"{EVERY_5M * (cost['cpu'] * pages + cost['empty_cpu']):,.0f}",
             f"{EVERY_5M * cost['wall'] * pages / 3600:.1f}", f"{NEW_PER_DAY * per_obj:.1f}"),
            ("events + 1 reconciliation a day", f"{daily:,}", f"~{receives + NEW_PER_DAY * 2:,}",
             f"{cost['cpu'] * pages + cost['empty_cpu'] + idle * 86400:,.0f}",
             f"{cost['wall'] * pages / 3600:.2f}", f"{NEW_PER_DAY * per_obj:.1f}"),
        ]
        report.table(f"On paper: a {KEYS_1M // 1_000_000} M-key bucket, {NEW_PER_DAY:,} new objects a day "
                     f"(from the figures above: {1000 * cost['cpu']:.1f} ms of flexingest CPU and "
                     f"{1000 * cost['wall']:.0f} ms of wall per 1,000 keys listed and diffed, "
                     f"{idle:.4f} cores while idle on events with wait 1s)",
                     ["mode", "LIST requests/day", "SQS requests/day (wait 20s)",
                      "flexingest CPU s/day (listing, idle)", "listing hours/day (moto wall)",
                      "CPU s/day processing the new objects"], rows)
        report.emit(f"LIST requests saved: {five - daily:,} a day ({100 * (five - daily) / five:.1f} %). SQS: one "
                    f"long poll per {SQS_LONG_POLL} s when idle (the default wait; with wait 1s as here, "
                    f"{86400:,}), plus about one receive and one delete per batch of new objects "
                    f"(at most {NEW_PER_DAY * 2:,}). Idle CPU with the default 20 s wait is lower still than "
                    "the 1 s wait measured here.")
    report.emit("")
    report.emit(f"noise: all processes of the machine used {med([x['busy'] / x['window'] for x in runs]):.2f} "
                f"cores (median) during the upload windows; load average now {os.getloadavg()[0]:.2f}")
    report.emit("")
    report.emit("Commands (to reproduce): the service is `flexingest run PIPELINE` with, per sync, "
                "schedule: {every: 6h}, events: {type: sqs, queue_url: <moto queue>, wait: 1s}, steps: "
                "[write_json: {url: OUT}]; the uploads: "
                f"{PYTHON} {Path(__file__).name} --upload-child ENDPOINT BUCKET RATE SECONDS SIZE OUT.json")
    for m in listing_runs:
        report.emit(f"  [{m.label.rsplit(' #', 1)[0]}] {m.command()}")
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
