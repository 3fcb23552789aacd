"""The sync pass contract, run on every backend: local, S3, GCS, Azure Blob.

Each test drives the command line as a user would and checks what the user relies on:
exit codes, state rows, output files.
"""

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
from conftest import FLEXINGEST, Result, connector_for, run_flexingest, slow_hook
from stores import Store

from flexingest.state import State


def outputs(folder: Path) -> list[str]:
    """Every file under ``folder`` (relative paths), hidden leftovers included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def rows(state_path: Path, sync: str = "docs") -> dict[str, Any]:
    with State(state_path, create=False) as state:
        return {r["key"]: dict(r) for r in state.objects(sync)}


def copy_pipeline(store: Store, write_pipeline: Callable[..., Path], out: Path, **sync: Any) -> Path:
    return write_pipeline(connector_for(store), steps=[{"copy": {"url": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 4, **sync}])


def test_new_changed_unchanged_gone(store: Store, write_pipeline: Callable[..., Path], cli: Callable[..., Result],
                                    tmp_path: Path) -> None:
    out = tmp_path / "out"
    store.put_many({f"docs/{i}.txt": f"document {i}".encode() for i in range(6)})
    path = copy_pipeline(store, write_pipeline, out)

    first = cli("run", path, "--once")
    assert first.code == 0, first.stderr
    assert "listed 6, new 6, changed 0, retried 0, done 6, failed 0, dead 0, gone 0" in first.stderr
    assert outputs(out) == [f"docs/{i}.txt" for i in range(6)]

    second = cli("run", path, "--once")
    assert second.code == 0
    assert "listed 6, new 0, changed 0, retried 0, done 0, failed 0, dead 0, gone 0" in second.stderr

    store.put_many({f"docs/new-{i}.txt": b"fresh" for i in range(3)})
    store.put("docs/2.txt", b"document 2, rewritten")
    store.delete("docs/5.txt")
    third = cli("run", path, "--once")
    assert third.code == 0, third.stderr
    assert "listed 8, new 3, changed 1, retried 0, done 4, failed 0, dead 0, gone 1" in third.stderr
    assert (out / "docs/2.txt").read_bytes() == b"document 2, rewritten"

    state = rows(path.parent / ".flexingest" / "pipeline.db")
    assert state["docs/5.txt"]["gone_at"] is not None
    assert all(r["status"] == "done" for r in state.values())
    assert len(state) == 9
    assert "listed 8, new 0, changed 0" in cli("run", path, "--once").stderr


def test_same_modification_time_and_awkward_keys(store: Store, write_pipeline: Callable[..., Path],
                                                 cli: Callable[..., Result], tmp_path: Path) -> None:
    keys = [f"same-second/{i:03d}.txt" for i in range(40)] + [
        "with space/a b.txt", "unicode/äöü ß.txt", "日本語/ファイル.txt", "emoji 🎉/party.txt", "plus+and%percent.txt"]
    store.put_many({k: k.encode() for k in keys})
    if store.kind == "local":
        stamp = time.time() - 3600
        for k in keys:
            os.utime(Path(store.bucket) / k, (stamp, stamp))
    out = tmp_path / "out"
    path = copy_pipeline(store, write_pipeline, out)
    result = cli("run", path, "--once")
    assert result.code == 0, result.stderr
    assert outputs(out) == sorted(keys)
    assert all((out / k).read_bytes() == k.encode() for k in keys)
    assert sorted(rows(path.parent / ".flexingest" / "pipeline.db")) == sorted(keys)


def failing_hook(tmp_path: Path) -> str:
    """A python step that fails for the keys listed in ``fail.txt`` beside the pipeline."""
    module = f"hooks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from pathlib import Path\n"
        "def check(record):\n"
        f"    bad = (Path({str(tmp_path)!r}) / 'fail.txt').read_text().split()\n"
        "    if record['key'] in bad:\n"
        "        raise RuntimeError('refusing ' + record['key'])\n"
        "    return record\n")
    return f"{module}:check"


def test_one_bad_object_fails_alone_then_dies_then_retry(store: Store, write_pipeline: Callable[..., Path],
                                                         cli: Callable[..., Result], tmp_path: Path) -> None:
    out = tmp_path / "out"
    (tmp_path / "fail.txt").write_text("b.txt")
    store.put_many({"a.txt": b"a", "b.txt": b"b", "c.txt": b"c"})
    path = write_pipeline(connector_for(store), steps=[{"python": {"callable": failing_hook(tmp_path)}},
                                                       {"copy": {"url": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs", "max_attempts": 2}])
    state_path = path.parent / ".flexingest" / "pipeline.db"

    first = cli("run", path, "--once")
    assert first.code == 1
    assert "done 2, failed 1, dead 0" in first.stderr
    assert "b.txt failed: " in first.stderr and "RuntimeError: refusing b.txt" in first.stderr
    assert outputs(out) == ["a.txt", "c.txt"]
    b = rows(state_path)["b.txt"]
    assert (b["status"], b["attempts"]) == ("failed", 1)
    assert "refusing b.txt" in b["error"]

    second = cli("run", path, "--once")
    assert second.code == 1
    assert "retried 1, done 0, failed 0, dead 1" in second.stderr
    assert (rows(state_path)["b.txt"]["status"], rows(state_path)["b.txt"]["attempts"]) == ("dead", 2)

    third = cli("run", path, "--once")
    assert third.code == 0, "a dead object is parked: it no longer fails passes"
    assert "retried 0, done 0" in third.stderr

    status = cli("status", path, "--json")
    assert status.code == 0
    entry = json.loads(status.stdout)["syncs"]["docs"]
    assert (entry["done"], entry["failed"], entry["dead"]) == (2, 0, 1)
    assert entry["problems"][0]["key"] == "b.txt"

    retry = cli("retry", path)
    assert retry.code == 0
    assert "1 object(s) will be processed again" in retry.stderr
    (tmp_path / "fail.txt").write_text("")
    fourth = cli("run", path, "--once")
    assert fourth.code == 0, fourth.stderr
    assert "retried 1, done 1, failed 0, dead 0" in fourth.stderr
    assert outputs(out) == ["a.txt", "b.txt", "c.txt"]
    assert rows(state_path)["b.txt"]["status"] == "done"


def count_done(state_path: Path) -> int:
    if not state_path.exists():
        return 0
    try:
        with State(state_path, create=False) as state:
            return sum(1 for r in state.objects("docs") if r["status"] == "done")
    except Exception:  # noqa: BLE001 - the file may be mid-creation
        return 0


def stalling_hook(folder: Path, fast: int) -> str:
    """A python step that is quick for the first ``fast`` objects it sees, then stalls: a kill
    after those are committed lands mid-pass whatever the machine's speed."""
    module = f"stall_{uuid.uuid4().hex[:8]}"
    (folder / f"{module}.py").write_text(
        "import itertools, os, threading, time\n"
        "seen = itertools.count()\n"
        "lock = threading.Lock()\n"
        "def step(record):\n"
        "    with lock:\n"
        "        n = next(seen)\n"
        f"    time.sleep(0.02 if n < {fast} or os.environ.get('STALL') == '0' else 60)\n"
        "    return record\n")
    return f"{module}:step"


def test_kill_9_mid_pass_loses_nothing(store: Store, write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    n = 40
    store.put_many({f"k/{i:02d}.txt": f"{i}".encode() for i in range(n)})
    out = tmp_path / "out"
    path = write_pipeline(connector_for(store), steps=[{"python": {"callable": stalling_hook(tmp_path, 12)}},
                                                       {"write_json": {"url": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 4}])
    state_path = path.parent / ".flexingest" / "pipeline.db"
    proc = subprocess.Popen([FLEXINGEST, "run", str(path), "--once"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while count_done(state_path) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = count_done(state_path)
    assert killed_at == 12, "the kill lands while the pass is stalled after the first 12 objects"

    again = run_flexingest("run", path, "--once", env={"STALL": "0"})
    assert again.code == 0, again.stderr
    assert f"listed {n}, new {n - killed_at}, changed 0" in again.stderr, "exactly the uncommitted objects"
    state = rows(state_path)
    assert len(state) == n and all(r["status"] == "done" for r in state.values())
    assert outputs(out) == [f"k/{i:02d}.txt.json" for i in range(n)], "each output exactly once, no leftovers"
    for i in range(n):
        assert json.loads((out / f"k/{i:02d}.txt.json").read_text())["key"] == f"k/{i:02d}.txt"


def test_second_concurrent_run_exits_75(store: Store, write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    store.put_many({f"{i}.txt": b"x" for i in range(20)})
    path = write_pipeline(connector_for(store), steps=[{"python": {"callable": slow_hook(tmp_path, 0.2)}}],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 1}])
    lock = path.parent / ".flexingest" / "pipeline.db.lock"
    first = subprocess.Popen([FLEXINGEST, "run", str(path), "--once"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        second = run_flexingest("run", path, "--once")
        assert second.code == 75
        assert f"process {first.pid} holds the state lock" in second.stderr
        assert time.monotonic() - started < 20, "at once: it does not wait for the lock"
    finally:
        first.terminate()
        first.wait(timeout=30)


def test_process_exact_keys_and_request_body(store: Store, write_pipeline: Callable[..., Path],
                                             cli: Callable[..., Result], tmp_path: Path) -> None:
    out = tmp_path / "out"
    store.put_many({"a.pdf": b"a", "b.pdf": b"b", "c.pdf": b"c"})
    connector = {**connector_for(store), "id": 42}
    path = write_pipeline(connector, steps=[{"copy": {"url": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs"}])

    by_name = cli("process", path, "--connector", "docs", "a.pdf", "missing.pdf")
    assert by_name.code == 1
    lines = [json.loads(line) for line in by_name.stdout.splitlines()]
    assert [(r["key"], r["status"]) for r in lines] == [("a.pdf", "done"), ("missing.pdf", "gone")]
    assert outputs(out) == ["a.pdf"]

    body = json.dumps({"source": {"connector_id": 42, "keys": ["b.pdf", "c.pdf"]}})
    (tmp_path / "request.json").write_text(body)
    from_file = cli("process", path, "--request", tmp_path / "request.json")
    assert from_file.code == 0, from_file.stderr
    assert outputs(out) == ["a.pdf", "b.pdf", "c.pdf"]

    store.put("b.pdf", b"b again")
    from_stdin = cli("process", path, "--request", "-", "--sync", "docs", input=body)
    assert from_stdin.code == 0
    assert (out / "b.pdf").read_bytes() == b"b again"
    recorded = rows(path.parent / ".flexingest" / "pipeline.db")
    assert sorted(recorded) == ["b.pdf", "c.pdf"], "with --sync, exactly these keys are recorded"

    bad = cli("process", path, "--request", "-", input='{"source": {"keys": ["a"]}}')
    assert bad.code == 2
    assert "invalid request body (missing 'connector_id')" in bad.stderr
    for body, why in [("[]", "must be JSON objects"), ('{"source": ["a"]}', "must be JSON objects"),
                      ('{"source": {"connector_id": 42, "keys": []}}', "non-empty list of strings"),
                      ('{"source": {"connector_id": 42, "keys": [1]}}', "non-empty list of strings"),
                      ("{not json", "Expecting property name")]:
        bad = cli("process", path, "--request", "-", input=body)
        assert bad.code == 2 and "invalid request body (" in bad.stderr and why in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr


def test_dry_run_lists_every_key_and_changes_nothing(store: Store, write_pipeline: Callable[..., Path],
                                                    cli: Callable[..., Result], tmp_path: Path) -> None:
    store.put_many({"a.pdf": b"a", "b.pdf": b"b", "drafts/c.pdf": b"c", "d.txt": b"d"})
    out = tmp_path / "out"
    path = copy_pipeline(store, write_pipeline, out, include=["*.pdf"], exclude=["drafts/"])
    dry = cli("run", path, "--once", "--dry-run")
    assert dry.code == 0
    assert sorted(dry.stdout.splitlines()) == sorted([
        "docs\tnew\ta.pdf", "docs\tnew\tb.pdf", "docs\tfiltered\tdrafts/c.pdf\texcluded by 'drafts/'",
        "docs\tfiltered\td.txt\tnot included"])
    assert not out.exists()
    assert not (path.parent / ".flexingest").exists()
    assert cli("run", path, "--once").code == 0
    store.put("a.pdf", b"changed")
    dry = cli("run", path, "--once", "--dry-run")
    assert "docs\tchanged\ta.pdf" in dry.stdout.splitlines()
    assert "docs\tdone\tb.pdf" in dry.stdout.splitlines()


def test_corrupt_state_file_is_refused(store: Store, write_pipeline: Callable[..., Path],
                                       cli: Callable[..., Result], tmp_path: Path) -> None:
    store.put("a.txt", b"a")
    path = copy_pipeline(store, write_pipeline, tmp_path / "out")
    state_path = path.parent / ".flexingest" / "pipeline.db"
    assert cli("run", path, "--once").code == 0
    data = bytearray(state_path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)
    state_path.write_bytes(bytes(data))
    result = cli("run", path, "--once")
    assert result.code == 1
    assert f"state file {state_path} cannot be used" in result.stderr
    assert state_path.read_bytes() == bytes(data), "a refused state file is never rewritten"


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_hostile_keys_never_escape_a_local_destination(kind: str, new_store: Callable[[str], Store],
                                                       write_pipeline: Callable[..., Path],
                                                       cli: Callable[..., Result], tmp_path: Path) -> None:
    store = new_store(kind)
    hostile = ["../escape.txt", "a/../../escape2.txt", "/etc/passwd-copy", "back\\slash.txt", "a//b.txt"]
    for key in hostile:  # raw puts: fsspec paths would normalize these keys away
        if kind == "s3":
            store.fs.call_s3("put_object", Bucket=store.bucket, Key=key, Body=b"evil")
        else:
            store.fs.call("POST", f"{store.server.url}/upload/storage/v1/b/{store.bucket}/o",
                          uploadType="media", name=key, data=b"evil", json_out=True)
    store.put("fine/ok.txt", b"ok")
    assert set(hostile) <= set(store.keys()) | {k for k in hostile if k.startswith("/")}
    out = tmp_path / "deep" / "out"
    path = write_pipeline(connector_for(store), steps=[{"copy": {"url": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs"}], name="p.yaml")
    before = sorted(p.as_posix() for p in tmp_path.rglob("*"))
    result = cli("run", path, "--once")
    assert result.code == 1
    assert outputs(out) == ["fine/ok.txt"]
    after = sorted(p.as_posix() for p in tmp_path.rglob("*"))
    new = set(after) - set(before)
    assert all(p.startswith(str(out)) or str(out).startswith(p) or "/.flexingest" in p for p in new), new
    dead = {k: r for k, r in rows(path.parent / ".flexingest" / "p.db").items() if r["status"] == "dead"}
    listed = {k for k in store.keys() if k != "fine/ok.txt"}
    assert set(dead) == listed, "an unsafe key is dead at once: no retry can make it safe"
    assert all("unsafe key" in r["error"] for r in dead.values())


@pytest.mark.parametrize("kind, scheme", [("s3", "s3"), ("gcs", "gs"), ("azure_blob", "abfs"), ("local", "file")])
def test_copy_and_write_json_into_another_bucket(kind: str, scheme: str, new_store: Callable[[str], Store],
                                                 write_pipeline: Callable[..., Path],
                                                 cli: Callable[..., Result]) -> None:
    """Outputs to another bucket of the same store: by a declared connector (a path in its bucket),
    or by a URL of that kind opened with the source connector's credentials."""
    source, dest = new_store(kind), new_store(kind)
    source.put_many({"a.txt": b"alpha", "dir/b c.txt": b"beta"})
    url = f"{scheme}://{dest.bucket}/json" if kind != "local" else f"file://{dest.bucket}/json"
    path = write_pipeline([connector_for(source), connector_for(dest, name="backup")],
                          steps=[{"copy": {"url": "mirror", "connector": "backup"}},
                                 {"write_json": {"url": url, "connector": "docs"}}],
                          syncs=[{"name": "docs", "connector": "docs"}])
    result = cli("run", path, "--once")
    assert result.code == 0, result.stderr
    assert dest.keys() == ["json/a.txt.json", "json/dir/b c.txt.json",
                           "mirror/a.txt", "mirror/dir/b c.txt"]
    assert dest.read("mirror/dir/b c.txt") == b"beta"
    assert json.loads(dest.read("json/a.txt.json"))["key"] == "a.txt"
    assert source.keys() == ["a.txt", "dir/b c.txt"], "nothing written into the source bucket"


def test_status_lists_recent_problems_and_says_how_many_more(tmp_path: Path, cli: Callable[..., Result]) -> None:
    (tmp_path / "docs").mkdir()
    for i in range(25):
        (tmp_path / "docs" / f"f{i:02}.txt").write_text(str(i))
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nconnectors:\n  - {name: docs, type: local, config: {path: docs}}\n"
                    "steps: [{command: {argv: ['false']}}]\nsyncs:\n  - {name: docs, connector: docs}\n")
    assert cli("run", path, "--once").code == 1
    default = cli("status", path)
    listed = [line for line in default.stdout.splitlines() if line.startswith("  docs: failed")]
    assert len(listed) == 20
    assert "  docs: and 5 more failed or dead (--problems 0 lists them all)" in default.stdout.splitlines()
    every = cli("status", path, "--problems", "0")
    assert sum(line.startswith("  docs: failed") for line in every.stdout.splitlines()) == 25
    assert "more failed or dead" not in every.stdout
    few = json.loads(cli("status", path, "--json", "--problems", "3").stdout)["syncs"]["docs"]
    assert (few["failed"], len(few["problems"])) == (25, 3)
    assert cli("status", path, "--problems", "-1").code == 2
