"""Executors: the steps run in a local process pool or on a Dask cluster; the coordinator alone
writes the state. The contract's core cases, workers killed mid-pass, secrets, a lost scheduler."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import FLEXINGEST, children_of, connector_for, run_flexingest
from servers import free_port, start_dask
from stores import Store

from flexingest.state import State

# moto accepts any key: these values are ours, so that a test can look for them in every log
S3_ENV = {"FI_S3_KEY": f"AKIAFI{uuid.uuid4().hex[:10].upper()}", "FI_S3_SECRET": f"fi-secret-{uuid.uuid4().hex}"}


def rows(state: Path) -> dict[str, Any]:
    with State(state, create=False) as s:
        return {r["key"]: dict(r) for r in s.objects("docs")}


def by_variables(store: Store, **extra: Any) -> dict[str, Any]:
    """The store's connector with its secrets given as ${VAR}, as workers must be given them."""
    connector = connector_for(store, **extra)
    if store.kind == "s3":
        connector["config"]["aws_access_key_id"] = "${FI_S3_KEY}"
        connector["config"]["aws_secret_access_key"] = "${FI_S3_SECRET}"
    return connector


def failing_hook(folder: Path) -> str:
    """A python step that fails for keys containing 'bad', and notes each pid it ran in."""
    module = f"hook_{uuid.uuid4().hex[:8]}"
    (folder / f"{module}.py").write_text(
        "import os\n"
        "def step(record):\n"
        f"    with open({str(folder / 'pids')!r}, 'a') as f:\n"
        "        f.write(f\"{os.getpid()}\\n\")\n"
        "    if 'bad' in record['key']:\n"
        "        raise ValueError('this one always fails')\n"
        "    record['text'] = f\"seen {record['key']}\"\n"
        "    return record\n")
    return f"{module}:step"


@pytest.mark.parametrize("executor", ["processes:2", "dask:2"])
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_the_contract_holds_with_other_executors(kind: str, executor: str, new_store: Callable[[str], Store],
                                                 write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    store = new_store(kind)
    store.put_many({"a.txt": b"a", "b.txt": b"b", "c.txt": b"c", "bad.txt": b"x", "sub/d.txt": b"d"})
    out = tmp_path / "out"
    path = write_pipeline(by_variables(store), steps=[{"python": {"callable": failing_hook(tmp_path)}},
                                                      {"write_json": {"url": str(out)}},
                                                      {"write_jsonl": {"path": str(tmp_path / "all.jsonl")}}],
                          syncs=[{"name": "docs", "connector": "docs", "max_attempts": 2, "concurrency": 8}])
    state = path.parent / ".flexingest" / "pipeline.db"
    first = run_flexingest("run", path, "--once", "--executor", executor, env=S3_ENV)
    assert first.code == 1, first.stderr
    assert "listed 5, new 5, changed 0, retried 0, done 4, failed 1, dead 0" in first.stderr
    pids = {int(p) for p in (tmp_path / "pids").read_text().split()}
    assert os.getpid() not in pids and len(pids) >= 1, "the steps ran in worker processes"
    assert rows(state)["bad.txt"]["status"] == "failed" and "this one always fails" in rows(state)["bad.txt"]["error"]

    store.put("a.txt", b"a, changed")
    store.delete("b.txt")
    store.put("e.txt", b"e")
    second = run_flexingest("run", path, "--once", "--executor", executor, env=S3_ENV)
    assert "listed 5, new 1, changed 1, retried 1, done 2, failed 0, dead 1, gone 1" in second.stderr, second.stderr
    state_rows = rows(state)
    assert {k: r["status"] for k, r in state_rows.items() if r["gone_at"] is None} == {
        "a.txt": "done", "c.txt": "done", "sub/d.txt": "done", "e.txt": "done", "bad.txt": "dead"}
    assert json.loads((out / "a.txt.json").read_text())["text"] == "seen a.txt"
    lines = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in lines) == ["a.txt", "a.txt", "b.txt", "c.txt", "e.txt", "sub/d.txt"], \
        "write_jsonl ran on the coordinator with the records the workers sent back"
    status = run_flexingest("status", path)
    assert f"docs: last run on {executor.split(':')[0]} (" in status.stdout, status.stdout
    third = run_flexingest("run", path, "--once", "--executor", executor, env=S3_ENV)
    assert "listed 5, new 0, changed 0, retried 0, done 0" in third.stderr, "nothing left: no cluster needed"
    assert "Scheduler at" not in third.stderr


def slow_hook(folder: Path, seconds: float) -> str:
    module = f"slow_{uuid.uuid4().hex[:8]}"
    (folder / f"{module}.py").write_text(
        "import os, time\n"
        "def step(record):\n"
        f"    with open({str(folder / 'pids')!r}, 'a') as f:\n"
        "        f.write(f\"{os.getpid()}\\n\")\n"
        f"    time.sleep({seconds})\n"
        "    return record\n")
    return f"{module}:step"


@pytest.mark.slow
def test_a_pool_process_killed_mid_pass_loses_nothing(new_store: Callable[[str], Store],
                                                      write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    store = new_store("local")
    n = 24
    store.put_many({f"{i:02d}.txt": b"x" for i in range(n)})
    out = tmp_path / "out"
    path = write_pipeline(connector_for(store), steps=[{"python": {"callable": slow_hook(tmp_path, 0.3)}},
                                                       {"write_json": {"url": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 8, "max_attempts": 1}],
                          executor={"type": "processes", "workers": 2, "threads": 2, "batch": 2})
    proc = subprocess.Popen([FLEXINGEST, "run", str(path), "--once"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "pids").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        busy = {int(x) for x in (tmp_path / "pids").read_text().split()}
        workers = [p for p, _ in children_of(proc.pid) if p in busy]
        assert workers, "a worker process is busy"
        os.kill(workers[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "a worker died with" in stderr
    state = rows(path.parent / ".flexingest" / "pipeline.db")
    assert len(state) == n and {r["status"] for r in state.values()} == {"done"}, "nothing dead, nothing lost"
    assert sorted(p.name for p in out.iterdir()) == [f"{i:02d}.txt.json" for i in range(n)]


@pytest.mark.slow
def test_a_dask_worker_killed_mid_pass_loses_nothing(new_store: Callable[[str], Store],
                                                     write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    """A real `dask scheduler` and two `dask worker` processes; one worker is killed with SIGKILL."""
    store = new_store("s3")
    n = 20
    store.put_many({f"k/{i:02d}.txt": f"{i}".encode() for i in range(n)})
    secret = f"never-shown-{uuid.uuid4().hex}"
    env = {**S3_ENV, "FI_WEBHOOK_TOKEN": secret}
    cluster = start_dask(2, env=env)  # workers resolve ${VAR} from their own environment
    try:
        out = tmp_path / "out"
        path = write_pipeline(by_variables(store),
                              steps=[{"python": {"callable": slow_hook(tmp_path, 0.4)}},
                                     {"copy": {"url": str(out)}},
                                     {"write_jsonl": {"path": str(tmp_path / "all.jsonl")}}],
                              syncs=[{"name": "docs", "connector": "docs", "concurrency": 8, "max_attempts": 1}],
                              executor={"type": "dask", "address": cluster.address, "batch": 2})
        proc = subprocess.Popen([FLEXINGEST, "run", str(path), "--once", "-vv"], stderr=subprocess.PIPE,
                                text=True, env={**os.environ, **env})
        try:
            deadline = time.monotonic() + 60
            while not (tmp_path / "pids").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)
            cluster.workers[0].send_signal(signal.SIGKILL)
            _, stderr = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, stderr
        state = rows(path.parent / ".flexingest" / "pipeline.db")
        assert len(state) == n and {r["status"] for r in state.values()} == {"done"}, state
        assert sorted(p.name for p in (out / "k").iterdir()) == [f"{i:02d}.txt" for i in range(n)]
        lines = (tmp_path / "all.jsonl").read_text().splitlines()
        assert sorted(json.loads(line)["key"] for line in lines) == [f"k/{i:02d}.txt" for i in range(n)], \
            "each object's line exactly once, whatever the workers did"
        logs = stderr + cluster.log_text()
        assert "DEBUG" in stderr, "debug logging was on"
        for value in (S3_ENV["FI_S3_SECRET"], S3_ENV["FI_S3_KEY"], secret):
            assert value not in logs, "no secret in flexingest's logs, the scheduler's or the workers'"
    finally:
        cluster.stop()


def test_an_unreachable_scheduler_fails_the_pass_cleanly(new_store: Callable[[str], Store],
                                                         write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    store = new_store("local")
    store.put_many({"a.txt": b"a", "b.txt": b"b"})
    path = write_pipeline(connector_for(store), steps=[{"write_json": {"url": str(tmp_path / "out")}}],
                          syncs=[{"name": "docs", "connector": "docs"}],
                          executor={"type": "dask", "address": f"tcp://127.0.0.1:{free_port()}"})
    started = time.monotonic()
    result = run_flexingest("run", path, "--once", timeout=120)
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "Dask scheduler tcp://127.0.0.1:" in result.stderr and "unreachable" in result.stderr
    assert time.monotonic() - started < 30
    assert rows(path.parent / ".flexingest" / "pipeline.db") == {}, "nothing charged, nothing recorded"


def test_secrets_written_in_the_file_are_not_sent_to_a_cluster_in_clear(new_store: Callable[[str], Store],
                                                                       write_pipeline: Callable[..., Path],
                                                                       tmp_path: Path) -> None:
    store = new_store("s3")
    store.put("a.txt", b"a")
    path = write_pipeline(connector_for(store), steps=[{"write_json": {"url": str(tmp_path / "out")}}],
                          syncs=[{"name": "docs", "connector": "docs"}],
                          executor={"type": "dask", "address": f"tcp://127.0.0.1:{free_port()}"})
    result = run_flexingest("run", path, "--once")
    assert result.code == 1
    assert "the pipeline file has secrets written in it" in result.stderr and "${VAR}" in result.stderr
    assert "tls://" in result.stderr


def test_validate_says_where_each_step_runs(write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    path = write_pipeline({"name": "docs", "type": "local", "config": {"path": str(tmp_path)}},
                          steps=["extract_text", {"write_jsonl": {"path": "all.jsonl"}},
                                 {"write_json": {"url": "out"}}],
                          syncs=[{"name": "docs", "connector": "docs"}], executor={"type": "processes"})
    result = run_flexingest("validate", path)
    assert result.code == 0
    assert ("top-level steps: on the processes workers: extract_text; on this process (the coordinator): "
            "write_jsonl, write_json") in result.stderr
