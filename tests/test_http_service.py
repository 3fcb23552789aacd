"""The service with its HTTP interface, as an operator meets it: starting (keys, addresses, the extra),
jobs across a kill -9, SIGTERM while a request is in flight, SIGHUP reloads."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import Result, slow_hook
from httpservice import KEY, HttpService, wait_for


def pipeline_file(folder: Path, syncs: list[dict[str, Any]], **top: Any) -> Path:
    (folder / "docs").mkdir(exist_ok=True)
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, **top,
        "connectors": [{"name": "docs", "id": 1, "type": "local", "config": {"path": "docs"}}],
        "steps": [{"write_jsonl": {"path": "out/records.jsonl"}}],
        "syncs": syncs,
    }, sort_keys=False))
    return path


def runs(folder: Path, sync: str) -> int:
    state = folder / ".flexingest" / "pipeline.db"
    if not state.exists():
        return 0
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM runs WHERE sync = ? AND ended_at IS NOT NULL",
                              (sync,)).fetchone()[0])


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Callable[..., HttpService]]:
    """``service(pipeline, *args, **kw)`` starts one; every service started is ended after the test."""
    started: list[HttpService] = []

    def start(path: Path, *args: str, **kw: Any) -> HttpService:
        one = HttpService(path, *args, **kw)
        started.append(one)
        return one

    yield start
    for one in started:
        one.kill()


# ---------------------------------------------------------------------- starting


def test_no_key_on_a_non_loopback_address_is_refused(tmp_path: Path, cli: Callable[..., Result]) -> None:
    path = pipeline_file(tmp_path, [{"name": "docs", "connector": "docs"}])
    refused = cli("run", path, "--http", "0.0.0.0:8080", env={"FLEXINGEST_API_KEYS": ""})
    assert refused.code == 2
    assert refused.stderr == ("error: --http 0.0.0.0:8080: refusing to serve a non-loopback address without an API "
                              "key; set FLEXINGEST_API_KEYS or give --api-key-file (or serve 127.0.0.1 only)\n")
    assert not (tmp_path / ".flexingest").exists(), "nothing started"
    bad = cli("run", path, "--http", "8080")
    assert bad.code == 2 and "expected HOST:PORT, e.g. 127.0.0.1:8080" in bad.stderr
    once = cli("run", path, "--once", "--http", "127.0.0.1:8080")
    assert once.code == 2 and "--http goes with the service, not --once" in once.stderr
    missing = cli("run", path, "--http", "127.0.0.1:0", "--api-key-file", tmp_path / "nope")
    assert missing.code == 2 and f"--api-key-file {tmp_path / 'nope'}: cannot read it" in missing.stderr
    (tmp_path / "empty").write_text("# no key yet\n\n")
    empty = cli("run", path, "--http", "127.0.0.1:0", "--api-key-file", tmp_path / "empty")
    assert empty.code == 2 and "no key in it" in empty.stderr


def test_an_address_in_use_is_an_error(tmp_path: Path, cli: Callable[..., Result]) -> None:
    path = pipeline_file(tmp_path, [{"name": "docs", "connector": "docs"}])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = cli("run", path, "--http", f"127.0.0.1:{port}")
    assert out.code == 1
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr


def test_a_missing_extra_names_its_pip_install(tmp_path: Path) -> None:
    path = pipeline_file(tmp_path, [{"name": "docs", "connector": "docs"}])
    hide = "import sys; sys.modules['fastapi'] = None; from flexingest.cli import cli; cli()"
    out = subprocess.run([sys.executable, "-c", hide, "run", str(path), "--http", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr == "error: --http needs fastapi: pip install 'flexingest[http]'\n"


def test_the_http_packages_cost_nothing_without_http(tmp_path: Path) -> None:
    path = pipeline_file(tmp_path, [{"name": "docs", "connector": "docs"}])
    code = ("import sys; from flexingest.loader import load_pipeline; load_pipeline(sys.argv[1]); "
            "import flexingest.runner, flexingest.sync, flexingest.cli, flexingest.jobs; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "[]\n"


def test_loopback_without_a_key_serves_and_warns(tmp_path: Path, service: Callable[..., HttpService]) -> None:
    path = pipeline_file(tmp_path, [{"name": "docs", "connector": "docs", "schedule": {"every": "1h"}}])
    one = service(path, keys=None, key=None)
    one.ready()
    assert "answers without authentication (loopback only)" in one.log()
    assert one.client.get("/v1/syncs").status_code == 200
    assert one.stop() == 0


def test_keys_from_a_file_and_never_in_a_log_line(tmp_path: Path, service: Callable[..., HttpService]) -> None:
    path = pipeline_file(tmp_path, [{"name": "docs", "connector": "docs", "schedule": {"every": "1h"}}])
    other = "second-key-from-file-5e8d"
    keys = tmp_path / "keys"
    keys.write_text(f"# the keys of the service\n\n  {KEY}  \n# rotated:\n{other}\n")
    one = service(path, "--api-key-file", str(keys), "-v", keys=None)
    one.ready()
    assert one.client.get("/v1/syncs").status_code == 200
    assert one.client.get("/v1/syncs", headers={"X-API-KEY": other}).status_code == 200
    assert one.client.get("/v1/syncs", headers={"X-API-KEY": "# the keys of the service"}).status_code == 401
    # a client that puts a key in a URL: the access log (on with -v) masks it
    assert one.client.get(f"/v1/syncs?api_key={other}").status_code == 200
    one.wait_log("/v1/syncs?api_key=**********")
    assert one.stop() == 0
    log = one.log()
    assert '"GET /v1/syncs HTTP/1.1" 200' in log, "the access log was on"
    assert KEY not in log and other not in log


# ---------------------------------------------------------------------- jobs across restarts


@pytest.mark.slow
def test_a_job_accepted_before_a_kill_9_is_finished_after_the_restart(tmp_path: Path,
                                                                      service: Callable[..., HttpService]) -> None:
    path = pipeline_file(tmp_path, [{"name": "docs", "connector": "docs", "prefix": "scheduled/",
                                     "schedule": {"every": "1h"}, "concurrency": 1,
                                     "steps": [{"python": {"callable": slow_hook(tmp_path, 0.7)}},
                                               {"write_jsonl": {"path": "out/jobs.jsonl"}}]}])
    keys = [f"jobs/{i}.txt" for i in range(4)]
    (tmp_path / "docs" / "jobs").mkdir()
    for key in [*keys, "jobs/later.txt"]:
        (tmp_path / "docs" / key).write_text(key)
    first = service(path)
    first.ready()
    a = first.client.post("/v1/data-process/async", json={"source": {"connector_id": 1, "keys": keys},
                                                          "sync": "docs"}).json()["job_id"]
    b = first.client.post("/v1/data-process/async", json={"source": {"connector_id": 1, "keys": ["jobs/later.txt"]},
                                                          "sync": "docs"}).json()["job_id"]
    wait_for(lambda: first.client.get(f"/v1/data-process/{a}").json()["status"] == "running", 10, "job a to run")
    assert first.client.get(f"/v1/data-process/{b}").json()["status"] == "queued"
    first.kill()

    second = service(path)
    second.wait_log(f"job {a}: resuming 4 key(s)")

    def finished(job: str) -> dict[str, Any] | None:
        answer: dict[str, Any] = second.client.get(f"/v1/data-process/{job}").json()
        return answer if answer["status"] in ("done", "failed") else None

    for job, expected in ((a, keys), (b, ["jobs/later.txt"])):
        answer = wait_for(lambda job=job: finished(job), 30, f"job {job}")
        assert answer["status"] == "done", answer
        assert answer["results"] == [{"key": k, "status": "done", "error": None} for k in expected]
    lines = (tmp_path / "out" / "jobs.jsonl").read_text().splitlines()
    assert {yaml.safe_load(line)["key"] for line in lines} == {*keys, "jobs/later.txt"}
    assert second.stop() == 0


@pytest.mark.slow
def test_sigterm_lets_the_object_in_flight_of_a_job_finish_and_the_next_start_ends_the_job(
        tmp_path: Path, service: Callable[..., HttpService]) -> None:
    path = pipeline_file(tmp_path, [{"name": "docs", "connector": "docs", "prefix": "scheduled/",
                                     "schedule": {"every": "1h"}, "concurrency": 1,
                                     "steps": [{"python": {"callable": slow_hook(tmp_path, 1.5)}},
                                               {"write_jsonl": {"path": "out/jobs.jsonl"}}]}])
    keys = [f"{i}.txt" for i in range(4)]
    for key in keys:
        (tmp_path / "docs" / key).write_text(key)
    first = service(path, "--grace", "10s")
    first.ready()
    job = first.client.post("/v1/data-process/async", json={"source": {"connector_id": 1, "keys": keys},
                                                            "sync": "docs"}).json()["job_id"]
    wait_for(lambda: first.client.get(f"/v1/data-process/{job}").json()["status"] == "running", 10, "the job")
    time.sleep(0.5)  # the first object is in its step
    started = time.monotonic()
    assert first.stop() == 0, first.log()
    assert time.monotonic() - started < 8, "the object in flight finished well within the grace"
    assert f"job {job}: stopped before its end; it is taken up again at the next start" in first.log()
    written = (tmp_path / "out" / "jobs.jsonl").read_text().splitlines()
    assert 1 <= len(written) < 4, "the object in flight finished; no other started"

    second = service(path)
    second.wait_log(f"job {job}: resuming 4 key(s)")
    answer = wait_for(lambda: (a := second.client.get(f"/v1/data-process/{job}").json())["status"] == "done" and a,
                      30, "the job to end")
    assert [r["status"] for r in answer["results"]] == ["done"] * 4
    assert second.stop() == 0


# ---------------------------------------------------------------------- stopping


def test_sigterm_answers_the_request_in_flight_then_exits_0(tmp_path: Path,
                                                            service: Callable[..., HttpService]) -> None:
    path = pipeline_file(tmp_path, [{"name": "docs", "connector": "docs", "schedule": {"every": "1h"}}])
    (tmp_path / "docs" / "a.txt").write_text("a")
    one = service(path)
    one.ready()
    halfway = threading.Event()
    answers: list[httpx.Response] = []

    def trickle() -> Iterator[bytes]:
        yield b'{"source": {"connector_id": 1, '
        halfway.set()
        time.sleep(1.5)  # the service is told to stop meanwhile
        yield b'"keys": ["a.txt"]}}'

    def request() -> None:
        answers.append(one.client.post("/v1/data-process/async", content=trickle(),
                                       headers={"Content-Type": "application/json"}))

    thread = threading.Thread(target=request)
    thread.start()
    assert halfway.wait(10)
    time.sleep(0.2)
    one.proc.send_signal(signal.SIGTERM)
    thread.join(30)
    assert answers and answers[0].status_code == 202, answers and answers[0].text
    assert one.proc.wait(30) == 0, one.log()
    assert "SIGTERM: finishing objects in flight" in one.log()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{one.url}/healthz")


# ---------------------------------------------------------------------- reload


@pytest.mark.slow
def test_sighup_reloads_a_valid_file_and_refuses_an_invalid_one(tmp_path: Path,
                                                                 service: Callable[..., HttpService]) -> None:
    every_second = {"every": "1s"}
    path = pipeline_file(tmp_path, [{"name": "a", "connector": "docs", "schedule": every_second},
                                    {"name": "keep", "connector": "docs", "schedule": every_second}])
    one = service(path)
    wait_for(lambda: runs(tmp_path, "a") >= 2 and runs(tmp_path, "keep") >= 2, 20, "passes of a and keep")

    pipeline_file(tmp_path, [{"name": "keep", "connector": "docs", "schedule": {"every": "1h"}},
                             {"name": "b", "connector": "docs", "schedule": every_second}])
    one.proc.send_signal(signal.SIGHUP)
    one.wait_log("reloaded: 2 sync(s); added: b; removed: a")
    time.sleep(1.5)  # a pass that was in flight at the reload finishes
    a_runs, keep_runs = runs(tmp_path, "a"), runs(tmp_path, "keep")
    wait_for(lambda: runs(tmp_path, "b") >= 3, 20, "passes of the sync added")
    assert runs(tmp_path, "a") == a_runs, "the sync removed no longer runs"
    assert runs(tmp_path, "keep") == keep_runs, "the sync rescheduled to 1h does not run every second"
    assert set(one.client.get("/v1/syncs").json()["syncs"]) >= {"keep", "b"}
    assert one.client.post("/v1/syncs/a/run").status_code == 404

    path.write_text(path.read_text().replace("connector: docs", "connector: nowhere", 1))
    one.proc.send_signal(signal.SIGHUP)
    one.wait_log("refused: 1 error(s); the running pipeline is kept")
    assert f"{path}:" in one.log() and "unknown connector 'nowhere' (known: docs)" in one.log()
    b_runs = runs(tmp_path, "b")
    wait_for(lambda: runs(tmp_path, "b") >= b_runs + 2, 20, "the old syncs to keep running")
    assert one.stop() == 0
