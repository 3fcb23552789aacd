"""The diff of a listing against the ledger, and what recording outcomes does to it.

``State(":memory:")`` is the real state (the same SQL, the same migrations) in a throwaway
database: each test lists keys as a pass would (``begin_listing``, ``add_listing``, ``plan``,
``planned``), records outcomes as the pass's :class:`~flexingest.processing.Committer` does
(``record``) and checks what the next listing plans. No store, no steps.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pytest

from flexingest.processing import Committer
from flexingest.state import Outcome, State
from flexingest.steps import Settled, Step, StepContext, StepOptions

Listed = Mapping[str, str | tuple[str, str]]  # key -> version, or (version, why it is filtered)


@pytest.fixture
def state() -> Iterator[State]:
    with State(":memory:") as s:
        yield s


def listing(state: State, listed: Listed, *, sync: str = "s", ignore_changes: bool = False,
            everything: bool = False) -> tuple[dict[str, int], dict[str, str]]:
    """List ``listed`` and diff it: (the plan's counts, key -> reason of each key to process)."""
    state.begin_listing()
    rows: list[tuple[str, str, int, float | None, str | None]] = []
    for key, value in listed.items():
        version, skip = value if isinstance(value, tuple) else (value, None)
        rows.append((key, version, 10, 1_700_000_000.0, skip))
    state.add_listing(rows)
    plan = state.plan(sync, ignore_changes=ignore_changes, everything=everything)
    todo = {r["key"]: r["reason"] for batch in state.planned() for r in batch}
    assert plan.to_process == len(todo)
    return plan.counts, todo


def done(key: str, version: str = "v1") -> Outcome:
    return Outcome(key, version, 10, 1_700_000_000.0, "done")


def failed(key: str, version: str = "v1", **kw: bool) -> Outcome:
    return Outcome(key, version, 10, 1_700_000_000.0, "failed", f"{key} failed", **kw)


def row(state: State, key: str, sync: str = "s") -> dict[str, object]:
    [found] = [dict(r) for r in state.objects(sync) if r["key"] == key]
    return found


def test_a_first_listing_is_all_new_in_listing_order(state: State) -> None:
    counts, todo = listing(state, {"c": "1", "a": "1", "b": "1"})
    assert counts == {"new": 3, "done": 0}
    assert list(todo.items()) == [("c", "new"), ("a", "new"), ("b", "new")]


def test_planned_keys_come_in_batches(state: State) -> None:
    listing(state, {f"k{i}": "1" for i in range(5)})
    assert [[r["key"] for r in batch] for batch in state.planned(batch=2)] == [["k0", "k1"], ["k2", "k3"], ["k4"]]


def test_done_objects_are_counted_done_and_not_planned(state: State) -> None:
    listing(state, {"a": "1", "b": "1"})
    state.record("s", [done("a", "1"), done("b", "1")], max_attempts=3)
    counts, todo = listing(state, {"a": "1", "b": "1", "c": "1"})
    assert (counts, todo) == ({"new": 1, "done": 2}, {"c": "new"})


def test_a_new_version_is_changed_and_the_old_one_stays_recorded_until_then(state: State) -> None:
    state.record("s", [done("a", "1"), done("b", "1")], max_attempts=3)
    counts, todo = listing(state, {"a": "2", "b": "1"})
    assert (counts, todo) == ({"changed": 1, "done": 1}, {"a": "changed"})
    assert row(state, "a")["version"] == "1", "planning records nothing"
    state.record("s", [done("a", "2")], max_attempts=3)
    assert row(state, "a")["version"] == "2"
    assert listing(state, {"a": "2", "b": "1"}) == ({"done": 2}, {})


def test_failures_count_attempts_until_max_attempts_makes_the_object_dead(state: State) -> None:
    assert state.record("s", [failed("a")], max_attempts=3) == {"dead": 0}
    assert (row(state, "a")["status"], row(state, "a")["attempts"]) == ("failed", 1)
    assert listing(state, {"a": "v1"}) == ({"retry": 1, "done": 0}, {"a": "retry"})
    state.record("s", [failed("a")], max_attempts=3)
    assert (row(state, "a")["status"], row(state, "a")["attempts"]) == ("failed", 2)
    assert state.record("s", [failed("a")], max_attempts=3) == {"dead": 1}
    assert (row(state, "a")["status"], row(state, "a")["attempts"], row(state, "a")["error"]) == ("dead", 3, "a failed")
    assert listing(state, {"a": "v1"}) == ({"dead": 1, "done": 0}, {}), "a dead object is parked"


def test_max_attempts_1_makes_the_first_failure_dead(state: State) -> None:
    assert state.record("s", [failed("a")], max_attempts=1) == {"dead": 1}
    assert row(state, "a")["status"] == "dead"


def test_a_new_version_of_a_dead_or_failed_object_gets_fresh_attempts(state: State) -> None:
    state.record("s", [failed("dead"), failed("failing")], max_attempts=1)
    state.record("s", [failed("failing")], max_attempts=3)  # now failed with 2 attempts, under a larger limit
    counts, todo = listing(state, {"dead": "v2", "failing": "v2"})
    assert todo == {"dead": "changed", "failing": "changed"}
    state.record("s", [failed("dead", "v2"), failed("failing", "v2")], max_attempts=3)
    assert [(r["key"], r["status"], r["attempts"]) for r in state.objects("s")] == [
        ("dead", "failed", 1), ("failing", "failed", 1)]


def test_an_outage_is_never_charged_and_never_makes_an_object_dead(state: State) -> None:
    for _ in range(5):
        assert state.record("s", [failed("a", transient=True)], max_attempts=2) == {"dead": 0}
    assert (row(state, "a")["status"], row(state, "a")["attempts"]) == ("failed", 0)
    assert listing(state, {"a": "v1"})[1] == {"a": "retry"}
    state.record("s", [failed("a")], max_attempts=2)
    assert (row(state, "a")["status"], row(state, "a")["attempts"]) == ("failed", 1), "only real failures count"


def test_a_failure_no_retry_can_cure_is_dead_at_once(state: State) -> None:
    assert state.record("s", [failed("a", permanent=True)], max_attempts=5) == {"dead": 1}
    assert (row(state, "a")["status"], row(state, "a")["attempts"]) == ("dead", 1)


def test_retry_puts_failed_and_dead_objects_back_for_the_next_pass(state: State) -> None:
    state.record("s", [done("ok"), failed("bad"), failed("worse", permanent=True)], max_attempts=3)
    state.record("other", [failed("elsewhere")], max_attempts=3)
    assert state.retry("s") == 2
    assert [(r["key"], r["status"], r["attempts"]) for r in state.objects("s")] == [
        ("bad", "pending", 0), ("ok", "done", 1), ("worse", "pending", 0)]
    assert row(state, "elsewhere", "other")["status"] == "failed", "retry of one sync leaves the others alone"
    assert listing(state, {"ok": "v1", "bad": "v1", "worse": "v1"}) == (
        {"retry": 2, "done": 1}, {"bad": "retry", "worse": "retry"})
    assert state.retry() == 1, "without a sync: every sync's (those of s are pending already)"
    assert row(state, "elsewhere", "other")["status"] == "pending"


def test_skipped_is_not_looked_at_again_until_its_version_changes(state: State) -> None:
    state.record("s", [Outcome("a", "v1", 10, None, "skipped", "unsupported type")], max_attempts=3)
    assert (row(state, "a")["status"], row(state, "a")["error"]) == ("skipped", "unsupported type")
    assert listing(state, {"a": "v1"}) == ({"done": 1}, {})
    assert listing(state, {"a": "v2"})[1] == {"a": "changed"}


def test_on_change_ignore_keeps_the_first_processed_version(state: State) -> None:
    state.record("s", [done("a", "v1"), failed("b", "v1")], max_attempts=3)
    counts, todo = listing(state, {"a": "v2", "b": "v2"}, ignore_changes=True)
    assert counts == {"ignored": 1, "changed": 1, "done": 0}
    assert todo == {"b": "changed"}, "an object never processed is not ignored: its new version is tried"
    assert row(state, "a")["version"] == "v1"
    assert listing(state, {"a": "v2"})[1] == {"a": "changed"}, "reprocess (the default) takes the new version"


def test_filtered_keys_are_never_planned_and_not_gone(state: State) -> None:
    state.record("s", [done("old.tmp")], max_attempts=3)
    counts, todo = listing(state, {"a.pdf": "v1", "old.tmp": ("v2", "excluded by '*.tmp'"), "x.tmp": ("v1", "no")})
    assert (counts, todo) == ({"new": 1, "filtered": 2, "done": 0}, {"a.pdf": "new"})
    assert state.mark_gone("s") == 0, "a filtered key is still listed"
    assert [r["key"] for r in state.objects("s")] == ["old.tmp"], "filtered keys leave no row"


def test_keys_no_longer_listed_are_marked_gone_once(state: State) -> None:
    state.record("s", [done("a"), done("b"), failed("c")], max_attempts=3)
    listing(state, {"a": "v1"})
    assert state.mark_gone("s") == 2
    assert [(r["key"], r["gone_at"] is not None) for r in state.objects("s")] == [
        ("a", False), ("b", True), ("c", True)]
    assert state.status()["s"]["gone"] == 2
    listing(state, {"a": "v1"})
    assert state.mark_gone("s") == 0, "gone already"


def test_a_listing_that_shows_everything_marks_nothing_gone(state: State) -> None:
    state.record("s", [done("a"), done("b")], max_attempts=3)
    listing(state, {"a": "v1", "b": "v1", "new": "v1"})
    assert state.mark_gone("s") == 0
    assert list(state.would_be_gone("s")) == []


def test_a_gone_object_back_with_the_same_version_is_not_processed_again(state: State) -> None:
    state.record("s", [done("a"), done("b")], max_attempts=3)
    listing(state, {"a": "v1"})
    state.mark_gone("s")
    assert listing(state, {"a": "v1", "b": "v1"}) == ({"done": 2}, {})
    state.unmark_gone("s")
    assert row(state, "b")["gone_at"] is None
    assert state.status()["s"]["gone"] == 0


def test_a_gone_object_back_with_a_new_version_is_processed(state: State) -> None:
    state.record("s", [done("a"), done("b")], max_attempts=3)
    listing(state, {"a": "v1"})
    state.mark_gone("s")
    assert listing(state, {"a": "v1", "b": "v2"})[1] == {"b": "changed"}
    state.unmark_gone("s")
    assert row(state, "b")["gone_at"] is None


def test_one_object_coming_back_while_another_goes_still_marks_the_other_gone(state: State) -> None:
    state.record("s", [done("a"), done("b")], max_attempts=3)
    listing(state, {"a": "v1"})
    state.mark_gone("s")  # b is gone
    listing(state, {"b": "v1"})  # b is back, a is deleted: as many listed as there were present
    state.unmark_gone("s")
    assert state.mark_gone("s") == 1
    assert [(r["key"], r["gone_at"] is not None) for r in state.objects("s")] == [("a", True), ("b", False)]


def test_an_object_deleted_before_it_was_read_is_gone_then_processed_if_it_comes_back(state: State) -> None:
    state.record("s", [Outcome("a", "v1", 10, None, "gone")], max_attempts=3)
    assert (row(state, "a")["status"], row(state, "a")["gone_at"] is not None) == ("pending", True)
    assert state.status()["s"]["gone"] == 1
    assert listing(state, {"a": "v1"})[1] == {"a": "retry"}, "it never was processed"


def test_a_done_object_deleted_before_its_new_version_was_read_keeps_what_was_processed(state: State) -> None:
    state.record("s", [done("a", "v1")], max_attempts=3)
    state.record("s", [Outcome("a", "v2", 10, None, "gone")], max_attempts=3)
    assert (row(state, "a")["status"], row(state, "a")["version"]) == ("done", "v1")
    assert listing(state, {"a": "v1"})[1] == {}


def test_syncs_keep_separate_ledgers(state: State) -> None:
    state.record("one", [done("a")], max_attempts=3)
    assert listing(state, {"a": "v1"}, sync="two")[1] == {"a": "new"}
    assert listing(state, {"a": "v1"}, sync="one")[1] == {}
    assert state.mark_gone("two") == 0


def test_a_dry_run_plan_explains_every_key(state: State) -> None:
    state.record("s", [done("done"), failed("dead", permanent=True), failed("failing"), done("old"),
                       Outcome("skipped", "v1", 10, None, "skipped", "unsupported")], max_attempts=3)
    listing(state, {"done": "v1", "dead": "v1", "failing": "v1", "new": "v1", "old": "v2", "skipped": "v1",
                    "skip": ("v1", "not included")}, everything=True)
    assert sorted(tuple(r) for r in state.explain()) == [
        ("changed", "old", None), ("dead", "dead", None), ("done", "done", None), ("done", "skipped", None),
        ("filtered", "skip", "not included"), ("new", "new", None), ("retry", "failing", None)]


# --------------------------------------------------------------------------- the Committer


class Output(Step):
    """A step whose outputs become durable at the commit (as write_jsonl's), or fail to."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__(StepOptions(), StepContext(base_dir=Path(".")))
        self.fail = fail
        self.settled: list[Settled] = []

    @contextlib.contextmanager
    def committing(self, settled: Sequence[Settled]) -> Iterator[dict[str, int]]:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.settled.extend(settled)
        yield {"/out/documents.jsonl": 123}


def test_the_committer_records_a_batch_and_counts_it(state: State) -> None:
    counts = {"done": 0, "failed": 0, "dead": 0, "skipped": 0, "gone": 0}
    step = Output()
    kept: list[Outcome] = []
    committer = Committer(state, "s", [step], max_attempts=1, counts=counts, keep=kept)
    for outcome in [done("a"), failed("b"), Outcome("c", "v1", 1, None, "skipped", "why"),
                    Outcome("d", "v1", 1, None, "gone")]:
        committer.add(outcome)
    committer.commit()
    assert counts == {"done": 1, "failed": 0, "dead": 1, "skipped": 1, "gone": 1}, "b died at its first attempt"
    assert [o.key for o in kept] == ["a", "b", "c", "d"]
    assert step.settled == [("a", "v1", "done"), ("b", "v1", "failed"), ("c", "v1", "skipped"), ("d", "v1", "gone")]
    assert state.output_length("/out/documents.jsonl", 0) == 123, "the output's length, in the same transaction"
    assert [(r["key"], r["status"]) for r in state.objects("s")] == [
        ("a", "done"), ("b", "dead"), ("c", "skipped"), ("d", "pending")]


def test_outputs_that_cannot_be_made_durable_fail_the_objects_instead_of_recording_them_done(state: State) -> None:
    counts = {"done": 0, "failed": 0, "dead": 0}
    committer = Committer(state, "s", [Output(fail=True)], max_attempts=3, counts=counts, keep=None)
    committer.add(done("a"))
    committer.add(Outcome("b", "v1", 1, None, "skipped", "why"))
    committer.commit()
    assert counts == {"done": 0, "failed": 2, "dead": 0}
    rows = {r["key"]: (r["status"], r["attempts"], r["error"]) for r in state.objects("s")}
    assert rows == {k: ("failed", 1, "could not make outputs durable: [Errno 28] No space left on device")
                    for k in ("a", "b")}
