"""`flexingest run` as a service: schedules, graceful stop, logs and progress."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import FLEXINGEST, Result, connector_for, run_flexingest, slow_hook
from stores import Store

from flexingest.console import ProgressBar
from flexingest.state import State


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_service(path: Path, meanwhile: Callable[[], None]) -> tuple[int, str]:
    """``flexingest run PATH`` as a service: ``meanwhile()``, then SIGTERM; its exit code and stderr."""
    service = subprocess.Popen([FLEXINGEST, "run", str(path)], stderr=subprocess.PIPE, text=True)
    try:
        meanwhile()
        service.send_signal(signal.SIGTERM)
        _, stderr = service.communicate(timeout=30)
    finally:
        if service.poll() is None:
            service.kill()
    return service.returncode, stderr


def files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def done_keys(state_path: Path) -> set[str]:
    if not state_path.exists():
        return set()
    with State(state_path, create=False) as state:
        return {r["key"] for r in state.objects("docs") if r["status"] == "done"}


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_run_picks_up_objects_added_while_it_runs(kind: str, new_store: Callable[[str], Store],
                                                  write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    store = new_store(kind)
    store.put("first.txt", b"1")
    out = tmp_path / "out"
    path = write_pipeline(connector_for(store), steps=[{"copy": {"url": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs", "schedule": {"every": "1s"}}])

    def meanwhile() -> None:
        wait_for(lambda: files(out) == {"first.txt"}, 30, "the first pass at start")
        store.put("later/second.txt", b"2")
        store.put("third.txt", b"3")
        wait_for(lambda: files(out) == {"first.txt", "later/second.txt", "third.txt"}, 30,
                 "objects added while running")

    code, stderr = run_service(path, meanwhile)
    assert code == 0, stderr
    assert "running 1 sync(s): docs (every 1s)" in stderr
    assert "SIGTERM: finishing objects in flight" in stderr
    assert "docs: listed 3, new 2" in stderr


def test_a_pass_longer_than_its_schedule_is_said_plainly(new_store: Callable[[str], Store],
                                                       write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    store = new_store("local")
    store.put_many({f"{i}.txt": b"x" for i in range(4)})
    path = write_pipeline(connector_for(store), steps=[{"python": {"callable": slow_hook(tmp_path, 1.0)}}],
                          syncs=[{"name": "docs", "connector": "docs", "schedule": {"every": "1s"},
                                  "concurrency": 1}])

    def meanwhile() -> None:
        wait_for(lambda: (path.parent / ".flexingest" / "pipeline.db").exists(), 30, "the first pass")
        time.sleep(3.5)  # the first pass takes 4 s; two or three run times fall inside it

    code, stderr = run_service(path, meanwhile)
    assert code == 0, stderr
    said = "docs: the previous pass is still running; scheduled passes are skipped until it ends"
    assert stderr.count(said) == 1, f"one line for the pass, not one per run time it covers:\n{stderr}"
    assert "maximum number of running instances" not in stderr


@pytest.mark.parametrize("once", [False, True], ids=["service", "once"])
def test_sigterm_finishes_in_flight_objects_and_loses_nothing(once: bool, new_store: Callable[[str], Store],
                                                              write_pipeline: Callable[..., Path],
                                                              tmp_path: Path) -> None:
    store = new_store("local")
    n = 30
    store.put_many({f"{i:02d}.txt": b"x" for i in range(n)})
    out = tmp_path / "out"
    path = write_pipeline(connector_for(store), steps=[{"python": {"callable": slow_hook(tmp_path, 0.6)}},
                                                       {"write_json": {"url": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 3}])
    state_path = path.parent / ".flexingest" / "pipeline.db"
    args = [FLEXINGEST, "run", str(path), "--grace", "10s"] + (["--once"] if once else [])
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(done_keys(state_path)) >= 3, 30, "some objects done")
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
        stopped_after = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert stopped_after < 10, "in-flight objects take 0.6s: the stop must not wait for the whole bucket"
    done = done_keys(state_path)
    assert 3 <= len(done) < n
    assert files(out) == {f"{k}.json" for k in done}, "every committed object has its output and vice versa"
    assert "stopped early: the rest is processed on the next pass" in stderr

    again = run_flexingest("run", path, "--once")
    assert again.code == 0, again.stderr
    assert f"new {n - len(done)}, changed 0" in again.stderr, "only what never started is processed"
    assert len(done_keys(state_path)) == n


def test_second_signal_stops_at_once(new_store: Callable[[str], Store], write_pipeline: Callable[..., Path],
                                     tmp_path: Path) -> None:
    store = new_store("local")
    store.put_many({f"{i}.txt": b"x" for i in range(10)})
    path = write_pipeline(connector_for(store), steps=[{"python": {"callable": slow_hook(tmp_path, 30)}}],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 2}])
    proc = subprocess.Popen([FLEXINGEST, "run", str(path), "--once", "--grace", "60s"], stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: (path.parent / ".flexingest" / "pipeline.db").exists(), 20, "the pass to start")
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT
    assert "second SIGINT: stopping now" in stderr
    with State(path.parent / ".flexingest" / "pipeline.db", create=False) as state:  # still opens: consistent
        assert state.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


SECRET = "s3cr3t-Value-That-Must-Never-Leak-42"
KEY_ID = "AKIA-NEVER-SHOWN-1234"


def test_debug_logs_never_show_secrets(new_store: Callable[[str], Store], write_pipeline: Callable[..., Path],
                                       tmp_path: Path) -> None:
    store = new_store("s3")
    store.put("a.txt", b"hello")
    good = connector_for(store)
    wrong = connector_for(store, name="wrong", aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
    hook = f"leaky_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{hook}.py").write_text(
        "def boom(record):\n"
        f"    raise RuntimeError('cannot talk to the API with key {SECRET}')\n")
    path = write_pipeline([good, wrong], steps=[{"webhook": {"url": "http://127.0.0.1:9/x",
                                                              "headers": {"Authorization": f"Bearer {SECRET}"},
                                                              "max_retries": 0}}],
                          syncs=[{"name": "docs", "connector": "docs"},
                                 {"name": "fails", "connector": "docs",
                                  "steps": [{"python": {"callable": f"{hook}:boom"}}]}])
    outputs = [run_flexingest("run", path, "--once", "-vv"),
               run_flexingest("run", path, "--once", "-vv", "--log-format", "json"),
               run_flexingest("test", path, "-vv"),
               run_flexingest("status", path, "--json", "-vv"),
               run_flexingest("status", path, "-vv")]
    everything = "".join(o.stdout + o.stderr for o in outputs)
    assert "DEBUG" in everything or '"level": "debug"' in everything, "debug logging was on"
    assert "RuntimeError" in everything, "the failing step was reported"
    assert SECRET not in everything
    assert "**********" in everything
    with State(path.parent / ".flexingest" / "pipeline.db", create=False) as state:
        dump = "".join(str(tuple(r)) for r in state.db.execute("SELECT * FROM objects"))
    assert SECRET not in dump


def test_json_logs_are_one_object_per_line(new_store: Callable[[str], Store], write_pipeline: Callable[..., Path],
                                           tmp_path: Path) -> None:
    store = new_store("local")
    store.put("a.txt", b"a")
    path = write_pipeline(connector_for(store), steps=["extract_text"], syncs=[{"name": "docs", "connector": "docs"}])
    out = run_flexingest("run", path, "--once", "--log-format", "json")
    assert out.code == 0
    lines = [json.loads(line) for line in out.stderr.splitlines()]
    summary = [line for line in lines if "pass" in line][-1]
    assert summary["level"] == "info"
    assert summary["pass"]["sync"] == "docs" and summary["pass"]["done"] == 1 and summary["pass"]["failed"] == 0
    assert summary["message"].startswith("docs: listed 1, new 1")


def test_quiet_hides_the_summary_but_not_failures(new_store: Callable[[str], Store],
                                                  write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    store = new_store("local")
    store.put("a.bin", b"\x00\x01\x02")
    path = write_pipeline(connector_for(store), steps=["extract_text"], syncs=[{"name": "docs", "connector": "docs"}])
    out = run_flexingest("run", path, "--once", "-q")
    assert out.code == 1
    assert "a.bin failed: unsupported type" in out.stderr
    assert "INFO" not in out.stderr


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_only() -> None:
    screen = Terminal()
    bar = ProgressBar("docs", stream=screen)
    for i in range(1, 11):
        bar(i, 10, i * 1500)
    bar.close()
    text = screen.getvalue()
    assert "docs [########################] 10/10 objects  15.0 KB" in text
    assert text.endswith("\r\033[K"), "the bar clears itself"

    pipe = io.StringIO()
    quiet = ProgressBar("docs", stream=pipe)
    quiet(1, 10, 100)
    quiet.close()
    assert pipe.getvalue() == ""


def test_status_shows_next_due_and_last_run(new_store: Callable[[str], Store], write_pipeline: Callable[..., Path],
                                            cli: Callable[..., Result]) -> None:
    store = new_store("local")
    store.put("a.txt", b"a")
    path = write_pipeline(connector_for(store), steps=["extract_text"],
                          syncs=[{"name": "docs", "connector": "docs", "schedule": {"every": "10m"}},
                                 {"name": "nightly", "connector": "docs",
                                  "schedule": {"cron": "0 2 * * *", "timezone": "Europe/Paris"}}])
    before = cli("status", path)
    assert before.code == 0
    assert "(no pass has run yet)" in before.stdout
    assert cli("run", path, "--once", "--sync", "docs").code == 0
    data: dict[str, Any] = json.loads(cli("status", path, "--json").stdout)
    docs = data["syncs"]["docs"]
    assert docs["done"] == 1 and docs["last_run"]["result"] == "ok" and docs["last_run"]["done"] == 1
    started = docs["last_run"]["started_at"]
    assert docs["next_due"][:16] > started[:16]
    nightly = data["syncs"]["nightly"]
    assert nightly["last_run"] is None
    assert nightly["next_due"].endswith(("01:00:00Z", "00:00:00Z")), "02:00 in Paris, in UTC"
    table = cli("status", path).stdout
    assert "docs" in table and "nightly" in table and "never" in table
