"""The pass over an in-memory bucket (tests/memstore.py): the sync contract without an emulator.

Each test loads a real pipeline file from ``tmp_path`` and runs :func:`flexingest.sync.run_pass`
with the real state (in a throwaway SQLite database), the real steps and the real processing,
over a :class:`~memstore.MemoryStorage`. The file's connector only names the storage (its
``local`` type is never opened: the pass is given the storage). A ``python`` step of the test's
own (:data:`HOOK`) counts the objects it sees and fails, skips or breaks the ones it is told to.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import types
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest
import yaml
from memstore import MemoryStorage, memory_storage, version_of

from flexingest import processing
from flexingest.config import Pipeline
from flexingest.exceptions import BucketNotFound, ObjectGone
from flexingest.loader import load_pipeline
from flexingest.state import State
from flexingest.sync import PassResult, run_pass

HOOK = '''\
from flexingest.exceptions import ObjectSkipped, StepError, UnprocessableObject

calls = []
behaviour = {}  # key -> "fail" | "transient" | "permanent" | "skip"


def step(record):
    key = record["key"]
    calls.append(key)
    how = behaviour.get(key)
    if how == "fail":
        raise RuntimeError(f"refusing {key}")
    if how == "transient":
        raise StepError(f"{key}: the receiver is unreachable", transient=True)
    if how == "permanent":
        raise UnprocessableObject(f"{key}: corrupt")
    if how == "skip":
        raise ObjectSkipped(f"{key}: not for us")
    return record
'''

COUNTED = ("listed", "new", "changed", "retry", "done", "skipped", "failed", "dead", "gone")


@dataclass
class Bench:
    """A pipeline with one sync ``docs``, its in-memory bucket, its state, and the hook's module."""

    pipeline: Pipeline
    storage: MemoryStorage
    state: State
    hook: types.ModuleType

    def run(self, **kwargs: Any) -> PassResult:
        return run_pass(self.pipeline, self.pipeline.syncs[0], self.state, storage=self.storage, **kwargs)

    def rows(self) -> dict[str, dict[str, Any]]:
        return {r["key"]: dict(r) for r in self.state.objects("docs")}

    def statuses(self) -> dict[str, tuple[str, int, bool]]:
        """key -> (status, attempts, gone)"""
        return {k: (r["status"], r["attempts"], r["gone_at"] is not None) for k, r in self.rows().items()}

    def last_run(self) -> dict[str, Any]:
        run: dict[str, Any] = self.state.status()["docs"]["last_run"]
        return run


def counts(result: PassResult) -> dict[str, int]:
    """The counts of the summary line, those that are not zero."""
    return {k: result.counts[k] for k in COUNTED if result.counts.get(k)}


@pytest.fixture
def bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Bench]]:
    """``bench(steps, **sync)``: a pipeline over a new in-memory bucket; ``"hook"`` in ``steps`` (the
    default) is the python step of :data:`HOOK`."""
    name = f"memhook_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(HOOK)
    monkeypatch.syspath_prepend(str(tmp_path))
    hook = importlib.import_module(name)
    states: list[State] = []

    def make(steps: Sequence[Any] = ("hook",), **sync: Any) -> Bench:
        data = {"version": 1, "connectors": [{"name": "mem", "type": "local", "config": {"path": "unused"}}],
                "steps": [{"python": {"callable": f"{name}:step"}} if s == "hook" else s for s in steps],
                "syncs": [{"name": "docs", "connector": "mem", **sync}]}
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        pipeline = load_pipeline(path, env={})
        state = State(":memory:")
        states.append(state)
        return Bench(pipeline, memory_storage("mem", pipeline.base_dir), state, hook)

    yield make
    for state in states:
        state.close()
    sys.modules.pop(name, None)


def test_the_memory_store_answers_as_a_connector_does(tmp_path: Path) -> None:
    storage = memory_storage("mem", tmp_path)
    storage.max_page = 2
    for key in ("b", "a/x", "a/y", "c d/ü"):
        storage.put(key, key.encode())
    assert [[o.key for o in page] for page in storage.iter_pages()] == [["a/x", "a/y"], ["b", "c d/ü"]]
    assert [o.key for page in storage.iter_pages("a/") for o in page] == ["a/x", "a/y"]
    assert storage.info("a/x")[:3] == ("a/x", version_of(b"a/x"), 3)
    assert storage.read_versioned("b") == (b"b", version_of(b"b"))
    storage.check()
    with pytest.raises(ObjectGone, match=r"^memory://bucket/nope: not found \(deleted after listing\?\)$"):
        storage.info("nope")
    with pytest.raises(ObjectGone):
        storage.read_versioned("a")  # a folder, not an object
    with pytest.raises(BucketNotFound, match="^memory://bucket: bucket or container not found$"):
        memory_storage("mem", tmp_path, create=False).check()


def test_new_objects_are_processed_once(bench: Callable[..., Bench]) -> None:
    b = bench()
    for key in ("a.txt", "dir/b c.txt", "ünï/日本.pdf"):
        b.storage.put(key, key.encode())
    first = b.run()
    assert counts(first) == {"listed": 3, "new": 3, "done": 3}
    assert first.ok and first.error is None
    assert sorted(b.hook.calls) == ["a.txt", "dir/b c.txt", "ünï/日本.pdf"]
    assert b.statuses() == {k: ("done", 1, False) for k in ("a.txt", "dir/b c.txt", "ünï/日本.pdf")}
    assert b.rows()["a.txt"]["version"] == version_of(b"a.txt")

    second = b.run()
    assert counts(second) == {"listed": 3}
    assert second.counts["unchanged"] == 3
    assert len(b.hook.calls) == 3, "nothing processed twice"
    assert b.last_run()["result"] == "ok"


def test_many_objects_at_once_are_each_processed_exactly_once(bench: Callable[..., Bench]) -> None:
    b = bench(concurrency=8)
    b.storage.max_page = 50  # several listing pages
    for i in range(300):
        b.storage.put(f"batch/{i:04d}.txt", str(i).encode())
    assert counts(b.run()) == {"listed": 300, "new": 300, "done": 300}
    assert sorted(b.hook.calls) == [f"batch/{i:04d}.txt" for i in range(300)]


def test_a_changed_object_is_processed_again_and_an_identical_rewrite_is_not(bench: Callable[..., Bench]) -> None:
    b = bench()
    b.storage.put("a.txt", b"one")
    b.storage.put("b.txt", b"two")
    b.run()
    b.hook.calls.clear()
    new_version = b.storage.put("a.txt", b"one, rewritten")
    b.storage.put("b.txt", b"two")  # the same bytes again: the same version, as S3's ETag
    result = b.run()
    assert counts(result) == {"listed": 2, "changed": 1, "done": 1}
    assert b.hook.calls == ["a.txt"]
    assert b.rows()["a.txt"]["version"] == new_version
    assert (b.rows()["a.txt"]["attempts"], b.rows()["b.txt"]["attempts"]) == (1, 1)


def test_deleted_objects_are_gone_once_and_come_back_only_with_a_new_version(bench: Callable[..., Bench]) -> None:
    b = bench()
    for key in ("a", "b", "c"):
        b.storage.put(key, key.encode())
    b.run()
    b.storage.delete("c")
    assert counts(b.run()) == {"listed": 2, "gone": 1}
    assert b.statuses()["c"] == ("done", 1, True)
    assert counts(b.run()) == {"listed": 2}, "gone is counted once"
    assert b.state.status()["docs"]["gone"] == 1

    b.storage.put("c", b"c")  # back as it was
    assert counts(b.run()) == {"listed": 3}
    assert b.statuses()["c"] == ("done", 1, False), "listed again: no longer gone, not processed again"
    b.storage.delete("c")
    b.run()
    b.storage.put("c", b"c, new")
    b.hook.calls.clear()
    assert counts(b.run()) == {"listed": 3, "changed": 1, "done": 1}
    assert b.hook.calls == ["c"] and b.statuses()["c"] == ("done", 1, False)


def test_a_failing_step_counts_attempts_then_the_object_is_dead_until_retry(bench: Callable[..., Bench]) -> None:
    b = bench(max_attempts=2)
    for key in ("a", "b", "c"):
        b.storage.put(key, key.encode())
    b.hook.behaviour["b"] = "fail"

    first = b.run()
    assert counts(first) == {"listed": 3, "new": 3, "done": 2, "failed": 1}
    assert not first.ok, "run --once exits 1"
    assert b.rows()["b"]["error"] == f"{b.hook.__name__}:step raised RuntimeError: refusing b"
    assert b.statuses()["b"] == ("failed", 1, False)
    assert b.last_run()["result"] == "failed"

    second = b.run()
    assert counts(second) == {"listed": 3, "retry": 1, "dead": 1}
    assert not second.ok
    assert b.statuses()["b"] == ("dead", 2, False)

    third = b.run()
    assert counts(third) == {"listed": 3}
    assert third.counts["skipped_dead"] == 1
    assert third.ok, "a dead object is parked: it no longer fails passes"
    assert b.hook.calls.count("b") == 2

    assert b.state.retry("docs") == 1
    del b.hook.behaviour["b"]
    fourth = b.run()
    assert counts(fourth) == {"listed": 3, "retry": 1, "done": 1}
    assert fourth.ok and b.statuses()["b"] == ("done", 1, False)


def test_a_dead_object_with_a_new_version_gets_fresh_attempts(bench: Callable[..., Bench]) -> None:
    b = bench(max_attempts=1)
    b.storage.put("a", b"v1")
    b.hook.behaviour["a"] = "fail"
    assert counts(b.run()) == {"listed": 1, "new": 1, "dead": 1}
    b.storage.put("a", b"v2")
    assert counts(b.run()) == {"listed": 1, "changed": 1, "dead": 1}
    del b.hook.behaviour["a"]
    b.storage.put("a", b"v3")
    assert counts(b.run()) == {"listed": 1, "changed": 1, "done": 1}


def test_an_unprocessable_object_is_dead_at_once(bench: Callable[..., Bench]) -> None:
    b = bench(max_attempts=5)
    b.storage.put("corrupt.pdf", b"%PDF-")
    b.hook.behaviour["corrupt.pdf"] = "permanent"
    result = b.run()
    assert counts(result) == {"listed": 1, "new": 1, "dead": 1}
    assert b.statuses()["corrupt.pdf"] == ("dead", 1, False)
    assert b.rows()["corrupt.pdf"]["error"] == "corrupt.pdf: corrupt"
    assert b.hook.calls == ["corrupt.pdf"], "no retry inside the pass either"


def test_an_outage_stops_the_pass_and_is_charged_to_no_object(bench: Callable[..., Bench],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processing, "BACKOFF", 0.0)  # the in-pass retries, without their waits
    b = bench(concurrency=1, max_attempts=1)
    keys = [f"k{i}" for i in range(10)]
    for key in keys:
        b.storage.put(key, key.encode())
        b.hook.behaviour[key] = "transient"
    result = b.run()
    assert result.error is not None and result.error.startswith(
        f"stopped after {processing.BREAKER} objects in a row failed with transient errors")
    assert not result.ok
    failed = b.statuses()
    assert processing.BREAKER <= len(failed) < len(keys), "the rest waits for the next pass"
    assert set(failed.values()) == {("failed", 0, False)}, "nothing charged, nothing dead"
    tries = [b.hook.calls.count(k) for k in sorted(failed)]
    assert tries[:processing.BREAKER] == [processing.TRANSIENT_RETRIES + 1] * processing.BREAKER, \
        "each retried inside the pass first"
    assert max(tries) == processing.TRANSIENT_RETRIES + 1, "one in flight at the trip stops retrying"
    assert b.last_run()["result"] == "error"


def test_skipped_objects_are_not_looked_at_again_until_their_version_changes(bench: Callable[..., Bench]) -> None:
    b = bench()
    b.storage.put("a.bin", b"\x00")
    b.storage.put("b.txt", b"b")
    b.hook.behaviour["a.bin"] = "skip"
    first = b.run()
    assert counts(first) == {"listed": 2, "new": 2, "done": 1, "skipped": 1}
    assert first.ok, "a skip is not a failure"
    assert (b.rows()["a.bin"]["status"], b.rows()["a.bin"]["error"]) == ("skipped", "a.bin: not for us")
    assert counts(b.run()) == {"listed": 2}
    b.storage.put("a.bin", b"\x00\x01")
    assert counts(b.run()) == {"listed": 2, "changed": 1, "skipped": 1}
    assert b.hook.calls.count("a.bin") == 2


def test_include_exclude_and_sizes_filter_before_anything_is_read(bench: Callable[..., Bench]) -> None:
    b = bench(steps=["extract_text"], prefix="in/", include=["**/*.txt"], exclude=["drafts/", "*.tmp.txt"],
              min_size=2, max_size="1KB")
    objects = {"in/a.txt": b"kept", "in/deep/er/b.txt": b"kept too", "in/c.pdf": b"%PDF", "in/drafts/d.txt": b"dd",
               "in/x/drafts/e.txt": b"ee", "in/f.tmp.txt": b"ff", "in/tiny.txt": b"1", "in/big.txt": b"x" * 1001,
               "out/g.txt": b"not under the prefix"}
    for key, data in objects.items():
        b.storage.put(key, data)
    result = b.run()
    assert counts(result) == {"listed": 8, "new": 2, "done": 2}
    assert result.counts["filtered"] == 6
    assert sorted(b.rows()) == ["in/a.txt", "in/deep/er/b.txt"], "filtered objects leave no row"
    assert b.storage.reads == 2, "filtered objects are never read"
    assert counts(b.run()) == {"listed": 8}


def test_min_age_waits_for_objects_to_settle(bench: Callable[..., Bench]) -> None:
    b = bench(min_age="1m")
    b.storage.put("old", b"old", modified=time.time() - 3600)
    b.storage.put("young", b"young")
    assert counts(b.run()) == {"listed": 2, "new": 1, "done": 1}
    assert b.hook.calls == ["old"]
    b.storage.put("young", b"young", modified=time.time() - 120)  # time passes: the same version, older
    assert counts(b.run()) == {"listed": 2, "new": 1, "done": 1}
    assert b.hook.calls == ["old", "young"]


def test_on_change_ignore_keeps_the_first_processed_version(bench: Callable[..., Bench]) -> None:
    b = bench(on_change="ignore")
    first = b.storage.put("a", b"first")
    b.run()
    b.storage.put("a", b"second")
    result = b.run()
    assert counts(result) == {"listed": 1}
    assert result.counts["unchanged"] == 1
    assert b.rows()["a"]["version"] == first and b.hook.calls == ["a"]


def test_write_json_and_write_jsonl_record_each_object_once(bench: Callable[..., Bench], tmp_path: Path) -> None:
    b = bench(steps=["extract_text", {"write_json": {"url": "out/records"}},
                     {"write_jsonl": {"path": "out/documents.jsonl"}}])
    b.storage.put("a.txt", b"hello a")
    b.storage.put("dir/b c.txt", b"hello b")
    assert counts(b.run()) == {"listed": 2, "new": 2, "done": 2}
    b.run()
    b.storage.put("a.txt", b"hello again")
    assert counts(b.run()) == {"listed": 2, "changed": 1, "done": 1}

    lines = [json.loads(line) for line in (tmp_path / "out/documents.jsonl").read_text().splitlines()]
    assert sorted((r["key"], r["text"]) for r in lines) == [
        ("a.txt", "hello a"), ("a.txt", "hello again"), ("dir/b c.txt", "hello b")], "one line per version processed"
    record = json.loads((tmp_path / "out/records/a.txt.json").read_text())
    assert {k: record[k] for k in ("connector", "sync", "key", "version", "size", "text")} == {
        "connector": "mem", "sync": "docs", "key": "a.txt", "version": version_of(b"hello again"), "size": 11,
        "text": "hello again"}, "write_json overwrites with the latest version"
    assert json.loads((tmp_path / "out/records/dir/b c.txt.json").read_text())["text"] == "hello b"
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()) \
        == ["documents.jsonl", "records/a.txt.json", "records/dir/b c.txt.json"], "no temporaries left"


def test_an_object_that_fails_leaves_no_line_and_no_record(bench: Callable[..., Bench], tmp_path: Path) -> None:
    b = bench(steps=["hook", {"write_json": {"url": "out/records"}}, {"write_jsonl": {"path": "out/documents.jsonl"}}])
    b.storage.put("good", b"good")
    b.storage.put("bad", b"bad")
    b.hook.behaviour["bad"] = "fail"
    assert counts(b.run()) == {"listed": 2, "new": 2, "done": 1, "failed": 1}
    assert [json.loads(line)["key"] for line in (tmp_path / "out/documents.jsonl").read_text().splitlines()] == [
        "good"]
    assert not (tmp_path / "out/records/bad.json").exists()
    del b.hook.behaviour["bad"]
    assert counts(b.run()) == {"listed": 2, "retry": 1, "done": 1}
    assert sorted(json.loads(line)["key"] for line in (tmp_path / "out/documents.jsonl").read_text().splitlines()) \
        == ["bad", "good"]


def test_an_object_deleted_between_listing_and_reading_is_gone_not_failed(bench: Callable[..., Bench]) -> None:
    b = bench(steps=["extract_text"])
    b.storage.put("a.txt", b"a")
    b.storage.put("b.txt", b"b")
    b.storage.after_listing = lambda: b.storage.delete("b.txt")
    result = b.run()
    assert counts(result) == {"listed": 2, "new": 2, "done": 1, "gone": 1}
    assert result.ok
    assert b.statuses() == {"a.txt": ("done", 1, False), "b.txt": ("pending", 0, True)}
    b.storage.after_listing = None
    b.storage.put("b.txt", b"b")
    assert counts(b.run()) == {"listed": 2, "retry": 1, "done": 1}, "back: it never was processed"


def test_an_object_overwritten_after_the_listing_is_processed_and_recorded_as_read(
        bench: Callable[..., Bench], tmp_path: Path) -> None:
    b = bench(steps=["extract_text", {"write_jsonl": {"path": "out/documents.jsonl"}}])
    listed = b.storage.put("a.txt", b"as listed")
    b.storage.after_listing = lambda: b.storage.put("a.txt", b"as read, longer")
    assert counts(b.run()) == {"listed": 1, "new": 1, "done": 1}
    [line] = (tmp_path / "out/documents.jsonl").read_text().splitlines()
    record = json.loads(line)
    read = version_of(b"as read, longer")
    assert (record["text"], record["version"], record["size"]) == ("as read, longer", read, 15)
    assert (b.rows()["a.txt"]["version"], b.rows()["a.txt"]["size"]) == (read, 15)
    assert listed != read
    b.storage.after_listing = None
    assert counts(b.run()) == {"listed": 1}, "what was recorded is what is there now"


def test_a_listing_that_breaks_partway_processes_nothing_and_marks_nothing_gone(bench: Callable[..., Bench]) -> None:
    b = bench()
    for i in range(6):
        b.storage.put(f"k{i}", b"x")
    b.run()
    b.storage.delete("k5")
    b.storage.put("k9", b"new")
    b.storage.max_page = 2
    b.storage.fail_listing_after = 1
    b.hook.calls.clear()
    result = b.run()
    assert result.error == "memory://bucket: [Errno 104] Connection reset by peer"
    assert not result.ok
    assert b.hook.calls == [] and not any(gone for _, _, gone in b.statuses().values())
    assert b.last_run()["result"] == "error"
    b.storage.fail_listing_after = None
    assert counts(b.run()) == {"listed": 6, "new": 1, "done": 1, "gone": 1}


def test_a_missing_bucket_fails_the_pass_with_its_name(bench: Callable[..., Bench]) -> None:
    b = bench()
    b.storage.put("a", b"a")
    b.run()
    b.storage.fs.rm(b.storage.root, recursive=True)
    result = b.run()
    assert result.error == "memory://bucket: bucket or container not found"
    assert b.statuses() == {"a": ("done", 1, False)}, "a missing bucket is not a bucket of deleted objects"


def test_a_dry_run_says_what_would_happen_and_changes_nothing(bench: Callable[..., Bench]) -> None:
    b = bench(exclude=["*.tmp"], max_attempts=1)
    for key in ("done", "dead", "gone", "changed", "skipped"):
        b.storage.put(key, b"1")
    b.hook.behaviour["dead"] = "fail"
    b.hook.behaviour["skipped"] = "skip"
    b.run()
    b.storage.delete("gone")
    b.storage.put("changed", b"2")
    b.storage.put("new", b"1")
    b.storage.put("x.tmp", b"1")
    before = b.rows()
    b.hook.calls.clear()
    said: list[tuple[str, str, str | None]] = []
    result = b.run(dry_run=True, on_explain=lambda reason, key, why: said.append((reason, key, why)))
    assert sorted(said) == [("changed", "changed", None), ("dead", "dead", None), ("done", "done", None),
                            ("done", "skipped", None), ("filtered", "x.tmp", "excluded by '*.tmp'"),
                            ("gone", "gone", "no longer listed: would be marked gone"), ("new", "new", None)]
    assert result.counts["new"] == 1 and result.counts["changed"] == 1
    assert b.rows() == before and b.hook.calls == []


def test_after_delete_removes_what_is_done_and_nothing_else(bench: Callable[..., Bench]) -> None:
    b = bench(after={"delete": True})
    for key in ("a", "b", "c"):
        b.storage.put(key, key.encode())
    b.hook.behaviour["b"] = "fail"
    result = b.run()
    assert counts(result) == {"listed": 3, "new": 3, "done": 2, "failed": 1}
    assert result.counts["after"] == 2
    assert b.storage.keys() == ["b"]
    assert b.statuses() == {"a": ("done", 1, True), "b": ("failed", 1, False), "c": ("done", 1, True)}
    assert counts(b.run()) == {"listed": 1, "retry": 1, "failed": 1}, "deleted objects are not counted gone again"


def test_after_move_to_moves_done_objects_out_of_the_prefix(bench: Callable[..., Bench]) -> None:
    b = bench(prefix="incoming/", after={"move_to": "processed/"})
    b.storage.put("incoming/x/a.pdf", b"a")
    b.storage.put("incoming/b.pdf", b"b")
    assert counts(b.run()) == {"listed": 2, "new": 2, "done": 2}
    assert b.storage.keys() == ["processed/b.pdf", "processed/x/a.pdf"]
    assert counts(b.run()) == {}, "nothing left to list, nothing processed again"


def test_a_stop_before_the_pass_starts_processes_nothing_and_loses_nothing(bench: Callable[..., Bench]) -> None:
    b = bench()
    b.storage.put("a", b"a")
    stop = processing.StopToken(grace=0)
    stop.request()
    result = b.run(stop=stop)
    assert result.interrupted and result.error is None
    assert b.hook.calls == [] and b.rows() == {}
    assert counts(b.run()) == {"listed": 1, "new": 1, "done": 1}, "the next pass does it"
