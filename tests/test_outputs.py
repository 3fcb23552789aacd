"""The output side: a destination or a webhook receiver that is down, missing or refusing is an
outage, never an object failure and never reported against the source; local outputs are
durable before an object is done, and a crash leaves no temporary of ours behind."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import Result, connector_for, run_flexingest
from receiver import Receiver
from stores import Store

TEMP_FOLDER = ".flexingest-tmp"  # flexingest.destinations.TEMP_FOLDER, as a user sees it


def rows(state: Path) -> dict[str, dict[str, Any]]:
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return {r["key"]: dict(r) for r in db.execute("SELECT * FROM objects WHERE sync = 'docs'")}
    finally:
        db.close()


def webhook(url: str) -> dict[str, Any]:
    return {"webhook": {"url": url, "max_retries": 1, "backoff": "0.05s", "timeout": "2s"}}


@pytest.mark.parametrize("outage", ["refused", "503"])
def test_a_receiver_that_is_down_never_makes_objects_dead(outage: str, new_store: Callable[[str], Store],
                                                          write_pipeline: Callable[..., Path]) -> None:
    """An outage of many passes: every pass stops early, nothing is charged, and once the
    receiver is back every object is delivered, once."""
    store = new_store("local")
    store.put_many({f"{i:02d}.txt": f"doc {i}".encode() for i in range(10)})
    receiver = Receiver()
    if outage == "503":
        receiver.status = 503
        receiver.start()
    path = write_pipeline(connector_for(store), steps=["extract_text", webhook(receiver.url)],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 2, "max_attempts": 2}])
    state = path.parent / ".flexingest" / "pipeline.db"
    try:
        for attempt in range(4):  # twice max_attempts: an object charged each pass would be dead by now
            started = time.monotonic()
            down = run_flexingest("run", path, "--once")
            if attempt == 0:
                print(f"\nreceiver {outage}: a pass stopped by the breaker in {time.monotonic() - started:.1f}s, "
                      f"{len(rows(state))} of 10 objects tried")
            assert down.code == 1, down.stderr
            assert "objects in a row failed with transient errors" in down.stderr
            assert "Traceback" not in down.stderr
            assert {r["status"] for r in rows(state).values()} == {"failed"}, "never dead for an outage"
            assert all(r["attempts"] == 0 for r in rows(state).values()), "an outage is not charged"
            assert len(rows(state)) < 10, "the breaker stopped the pass before every object timed out"
        if outage == "503":
            receiver.status = 200
        else:
            receiver.start()
        up = run_flexingest("run", path, "--once")
        assert up.code == 0, up.stderr
        assert {r["status"] for r in rows(state).values()} == {"done"} and len(rows(state)) == 10
        assert sorted(r["key"] for r in receiver.accepted) == [f"{i:02d}.txt" for i in range(10)]
        assert len(set(receiver.keys)) == 10, "one delivery per object"
    finally:
        receiver.stop()


def test_a_receiver_that_has_no_such_endpoint_stops_the_pass_at_once(new_store: Callable[[str], Store],
                                                                     write_pipeline: Callable[..., Path]) -> None:
    store = new_store("local")
    store.put_many({f"{i:02d}.txt": b"x" for i in range(20)})
    receiver = Receiver()
    receiver.status = 404
    receiver.start()
    try:
        path = write_pipeline(connector_for(store), steps=[webhook(receiver.url)],
                              syncs=[{"name": "docs", "connector": "docs", "concurrency": 1, "max_attempts": 1}])
        result = run_flexingest("run", path, "--once")
        assert result.code == 1, result.stderr
        assert f"webhook {receiver.url} answered 404: it has no such endpoint" in result.stderr
        assert receiver.requests <= 2, "a configuration outage stops the pass at once"
        state = rows(path.parent / ".flexingest" / "pipeline.db")
        assert {r["status"] for r in state.values()} == {"failed"} and all(r["attempts"] == 0 for r in state.values())
    finally:
        receiver.stop()


@pytest.mark.parametrize("kind, scheme", [("s3", "s3"), ("gcs", "gs"), ("azure_blob", "abfs")])
def test_a_missing_destination_bucket_is_named_and_stops_the_pass(kind: str, scheme: str,
                                                                  new_store: Callable[[str], Store],
                                                                  write_pipeline: Callable[..., Path]) -> None:
    store = new_store(kind)
    store.put_many({"rc/a.txt": b"a", "rc/b.txt": b"b", "rc/c.txt": b"c", "rc/d.txt": b"d"})
    url = f"{scheme}://no-such-dest-{os.getpid()}/mirror"
    path = write_pipeline(connector_for(store, name="src"),
                          steps=[{"copy": {"connector": "src", "url": url}}],
                          syncs=[{"name": "docs", "connector": "src", "concurrency": 1, "max_attempts": 1}])
    result = run_flexingest("run", path, "--once")
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert errors, result.stderr
    assert any(f"destination {scheme}://no-such-dest-{os.getpid()}/mirror/rc/" in line and "not found" in line
               for line in errors), result.stderr
    assert f"{store.bucket}/rc/a.txt: bucket" not in result.stderr, "the source bucket is not the one missing"
    state = rows(path.parent / ".flexingest" / "pipeline.db")
    assert state, "the object in flight is recorded, as failed"
    assert all(r["status"] == "failed" and r["attempts"] == 0 and r["gone_at"] is None for r in state.values()), \
        "nothing charged, nothing dead, nothing gone"
    assert len(state) == 1, "the pass stopped at the first object"


def test_a_local_output_folder_deleted_mid_pass_stops_the_pass(new_store: Callable[[str], Store],
                                                               write_pipeline: Callable[..., Path],
                                                               tmp_path: Path) -> None:
    store = new_store("local")
    store.put_many({f"{i}.txt": b"x" for i in range(6)})
    out = tmp_path / "out"
    module = tmp_path / "remover.py"
    module.write_text("import shutil\n"
                      "seen = []\n"
                      "def step(record):\n"
                      "    seen.append(record['key'])\n"
                      "    if len(seen) == 3:\n"
                      f"        shutil.rmtree({str(out)!r})\n"
                      "    return record\n")
    path = write_pipeline(connector_for(store), steps=[{"python": {"callable": "remover:step"}},
                                                       {"copy": {"url": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 1, "max_attempts": 1}])
    result = run_flexingest("run", path, "--once")
    assert result.code == 1, result.stderr
    assert f"destination {out}: the output folder no longer exists" in result.stderr
    state = rows(path.parent / ".flexingest" / "pipeline.db")
    statuses = sorted(r["status"] for r in state.values())
    assert statuses == ["done", "done", "failed"], state
    assert all(r["gone_at"] is None and (r["status"] == "done" or r["attempts"] == 0) for r in state.values())
    module.write_text("def step(record):\n    return record\n")
    again = run_flexingest("run", path, "--once")
    assert again.code == 0, again.stderr
    assert {r["status"] for r in rows(path.parent / ".flexingest" / "pipeline.db").values()} == {"done"}


def test_local_outputs_and_their_folders_are_fsynced_before_done(new_store: Callable[[str], Store],
                                                                 write_pipeline: Callable[..., Path],
                                                                 cli: Callable[..., Result],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    store = new_store("local")
    store.put_many({"a.txt": b"a", "deep/er/b.txt": b"b"})
    out = tmp_path / "out"
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the real call, noting which file or folder it made durable
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = write_pipeline(connector_for(store), steps=[{"copy": {"url": str(out)}},
                                                       {"write_json": {"url": str(tmp_path / "rec")}}],
                          syncs=[{"name": "docs", "connector": "docs"}])
    assert cli("run", path, "--once").code == 0
    for folder in (out, out / "deep" / "er", tmp_path / "rec", tmp_path / "rec" / "deep" / "er"):
        assert str(folder) in synced, f"{folder} was not fsynced"
    # an output is fsynced while it is still an unnamed file (O_TMPFILE): "<folder>/#<inode> (deleted)"
    unnamed = [p for p in synced if p.endswith(" (deleted)") and (p.startswith(str(out)) or "/rec" in p)]
    assert len(unnamed) == 4, synced


def test_a_temporary_left_by_a_crash_is_removed_by_the_next_pass(new_store: Callable[[str], Store],
                                                                 write_pipeline: Callable[..., Path],
                                                                 cli: Callable[..., Result],
                                                                 tmp_path: Path) -> None:
    store = new_store("local")
    store.put_many({"a.txt": b"a", "b.txt": b"b"})
    out = tmp_path / "out"
    path = write_pipeline(connector_for(store), steps=[{"copy": {"url": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs"}])
    assert cli("run", path, "--once").code == 0
    dead_pid = 2**22 + 17  # above pid_max's default: no process has it
    (out / TEMP_FOLDER).mkdir()
    (out / TEMP_FOLDER / f"{dead_pid}.140.3").write_bytes(b"half a replaced output")  # what kill -9 leaves
    store.put("a.txt", b"a, rewritten")
    assert cli("run", path, "--once").code == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["a.txt", "b.txt"]
    assert (out / "a.txt").read_bytes() == b"a, rewritten"


def test_a_closed_jsonl_step_never_reopens_its_file(tmp_path: Path) -> None:
    """A worker still inside a step when the pass ended (grace over) cannot write after close."""
    from flexingest.exceptions import StepError
    from flexingest.objects import ObjectInfo, Source
    from flexingest.steps import StepContext
    from flexingest.steps.write_jsonl import WriteJsonl, WriteJsonlOptions

    step = WriteJsonl(WriteJsonlOptions(path="out.jsonl"), StepContext(base_dir=tmp_path))
    record = {"key": "a.txt", "text": "a"}
    source = Source(None, ObjectInfo("a.txt", "1", 1, None))  # type: ignore[arg-type]
    step.process(dict(record), source)
    with step.committing([("a.txt", "1", "done")]) as lengths:
        assert lengths == {str(tmp_path / "out.jsonl"): len((tmp_path / "out.jsonl").read_bytes())}
    step.close()
    with pytest.raises(StepError, match="the pass has ended"):
        step.process(dict(record), source)
    assert [json.loads(line)["key"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ["a.txt"]


def test_jsonl_lines_of_objects_that_fail_later_or_are_not_committed_are_never_written(
        new_store: Callable[[str], Store], write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    store = new_store("local")
    store.put_many({"a.txt": b"a", "b.txt": b"b"})
    (tmp_path / "failer.py").write_text("def step(record):\n    if record['key'] == 'b.txt':\n"
                                        "        raise ValueError('b fails after its line was made')\n"
                                        "    return record\n")
    out = tmp_path / "all.jsonl"
    path = write_pipeline(connector_for(store), steps=[{"write_jsonl": {"path": str(out)}},
                                                       {"python": {"callable": "failer:step"}}],
                          syncs=[{"name": "docs", "connector": "docs"}])
    assert run_flexingest("run", path, "--once").code == 1
    assert [json.loads(line)["key"] for line in out.read_text().splitlines()] == ["a.txt"]


def test_jsonl_lines_written_after_the_last_commit_are_cut_on_the_next_open(
        new_store: Callable[[str], Store], write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    """What a process that died between its append and its commit leaves is cut, and its
    objects' lines are written again, once."""
    store = new_store("local")
    store.put_many({"a.txt": b"a", "b.txt": b"b"})
    out = tmp_path / "all.jsonl"
    path = write_pipeline(connector_for(store), steps=[{"write_jsonl": {"path": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs"}])
    assert run_flexingest("run", path, "--once").code == 0
    committed = out.read_bytes()
    with open(out, "ab") as f:  # exactly what a kill -9 after the append, before the commit, leaves
        f.write(b'{"key": "c.txt", "half": true}\n{"key": "c.t')
    store.put("c.txt", b"c")
    again = run_flexingest("run", path, "--once")
    assert again.code == 0, again.stderr
    assert "cut" in again.stderr and "written after the last commit" in again.stderr
    assert out.read_bytes().startswith(committed)
    assert [json.loads(line)["key"] for line in out.read_text().splitlines()] == ["a.txt", "b.txt", "c.txt"] or \
        sorted(json.loads(line)["key"] for line in out.read_text().splitlines()) == ["a.txt", "b.txt", "c.txt"]
