"""One sync pass: list, diff, process, record.

1. List the connector under the sync's prefix, page by page, into the state's
   temporary listing table (filters applied as each key arrives).
2. Diff the listing against the state in SQL: new, changed, retry, done, dead, filtered.
3. Push new/changed/retry objects through the steps, ``concurrency`` at a time
   (:mod:`flexingest.processing`: in this process's threads, or in batches to the workers
   of an executor, :mod:`flexingest.executors`); outcomes are committed in batches after
   every step has made its outputs durable.
4. If the listing was complete, mark what it no longer shows as gone. Record the run.

An object becomes ``done`` only after every step succeeded and its row is committed;
anything in flight when the process dies is simply processed again next time. After a
stop is requested no object starts; those in flight get the grace time, then the pass
returns without them (they are processed again by the next pass).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from . import metrics
from .connectors import Storage, open_connector
from .exceptions import FlexingestError, ObjectGone, StateError
from .objects import ObjectInfo
from .processing import (
    Committer,
    Processing,
    ProgressCallback,
    StopToken,
    build_steps,
    close_steps,
)
from .records import now_iso
from .state import Outcome, State
from .steps import Step

if TYPE_CHECKING:
    from .config import Pipeline, Sync
    from .events.base import Message
    from .events.messages import ObjectEvent
    from .executors import Executor, WorkerSpec

__all__ = ["PassResult", "ProgressCallback", "StopToken", "build_steps", "process_keys", "run_pass"]

log = logging.getLogger(__name__)

COUNTS = ("listed", "new", "changed", "retry", "done", "skipped", "failed", "dead", "gone")


@dataclass
class PassResult:
    sync: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    seconds: float = 0.0
    error: str | None = None
    interrupted: bool = False
    outcomes: list[Outcome] = field(default_factory=list)  # filled by `process` only
    kind: str = "pass"  # or "events": objects a batch of bucket events announced

    @property
    def ok(self) -> bool:
        return self.error is None and self.counts.get("failed", 0) == 0 and self.counts.get("dead", 0) == 0

    def log(self, logger: logging.Logger) -> None:
        """The summary line: INFO when all went well, WARNING when objects failed, ERROR when the pass did."""
        level = logging.INFO if self.ok else logging.ERROR if self.error else logging.WARNING
        logger.log(level, self.summary(), extra={"pass": {"sync": self.sync, "seconds": round(self.seconds, 3),
                                                          "error": self.error, "interrupted": self.interrupted,
                                                          **self.counts}})

    def summary(self) -> str:
        c = self.counts
        skipped = f", skipped {c['skipped']}" if c.get("skipped") else ""
        head = (f"{self.sync}: events: {c.get('messages', 0)} message(s), {c.get('listed', 0)} object(s)"
                if self.kind == "events" else f"{self.sync}: listed {c.get('listed', 0)}")
        text = (f"{head}, new {c.get('new', 0)}, changed {c.get('changed', 0)}, "
                f"retried {c.get('retry', 0)}, done {c.get('done', 0)}{skipped}, failed {c.get('failed', 0)}, "
                f"dead {c.get('dead', 0)}, gone {c.get('gone', 0)} in {self.seconds:.1f}s")
        if "missed" in c:
            text += f"; missed by events {c['missed']}"
        if c.get("after") or c.get("after_failed"):
            text += f"; after: {c.get('after', 0)} done" + (f", {c['after_failed']} failed"
                                                           if c.get("after_failed") else "")
        if self.interrupted:
            text += " (stopped early: the rest is processed on the next pass)"
        if self.error:
            text += f"; error: {self.error}"
        return text


def redactor(pipeline: Pipeline) -> Callable[[str], str]:
    """Masks every secret of the pipeline in a text (errors are stored and shown)."""
    from .redact import Redactor

    return Redactor(pipeline.secrets()).mask


# --------------------------------------------------------------------------- passes


def run_pass(pipeline: Pipeline, sync: Sync, state: State, *, stop: StopToken | None = None,
             dry_run: bool = False, on_progress: ProgressCallback | None = None,
             on_explain: Callable[[str, str, str | None], None] | None = None,
             storage: Storage | None = None, executor: Executor | None = None) -> PassResult:
    """One pass of ``sync``: see the module docstring. ``storage`` is the opened connector
    (the service keeps one per connector for its life); by default the pass opens it.
    ``executor``: where the steps run (None: threads of this process)."""
    started = time.monotonic()
    result = PassResult(sync.name)
    counts = result.counts
    redact = redactor(pipeline)
    steps: list[Step] = []
    spec: WorkerSpec | None = None
    listing_complete = False
    state_failed = False
    run_id = None
    started_at = now_iso()
    try:
        if storage is None:
            storage = open_connector(pipeline.connector(sync.connector), pipeline.base_dir)
        if not dry_run:
            steps, spec = _steps_for(pipeline, sync, storage.name, executor, state)
        listing_started = time.monotonic()
        listing_complete = _list(storage, sync, state, stop)
        if not dry_run:  # the first write: after the state's integrity check, run beside the listing
            run_id = state.start_run(sync.name, "pass", started_at, executor=_describe(executor))
        plan = state.plan(sync.name, ignore_changes=sync.on_change == "ignore", everything=dry_run)
        counts.update({k: plan.counts.get(k, 0) for k in ("new", "changed", "retry")})
        counts["listed"] = plan.listed
        counts["unchanged"] = plan.counts.get("done", 0) + plan.counts.get("ignored", 0)
        counts["filtered"] = plan.counts.get("filtered", 0)
        counts["skipped_dead"] = plan.counts.get("dead", 0)
        metrics.observe_listing(sync.name, time.monotonic() - listing_started, plan.listed, plan.to_process)
        if not listing_complete and stop is not None and stop.is_set():
            result.interrupted = True
        if dry_run:
            if on_explain:
                for reason, key, skip in state.explain():
                    on_explain(reason, key, skip)
                if listing_complete:
                    for key in state.would_be_gone(sync.name):
                        on_explain("gone", key, "no longer listed: would be marked gone")
            return result
        state.unmark_gone(sync.name)  # listed again: back (before objects gone meanwhile are marked)
        if sync.events is not None and listing_complete:
            _count_missed(state, sync, counts)
        if plan.to_process and not result.interrupted:
            log.info("%s: %d to process (%d new, %d changed, %d to retry) of %d listed", sync.name,
                     plan.to_process, counts["new"], counts["changed"], counts["retry"], counts["listed"])
            committer = Committer(state, sync.name, steps, sync.max_attempts, counts, None, after=_after(sync))
            processing = _processing(storage, steps, spec, committer, executor, record_as=sync.name,
                                     concurrency=sync.concurrency, total=plan.to_process, stop=stop,
                                     on_progress=metrics.progress(sync.name, on_progress), redact=redact)
            complete = processing.run(state.planned())
            if processing.breaker.tripped:
                result.error = redact(processing.breaker.reason or "")
            result.interrupted = result.interrupted or (not complete and not processing.breaker.tripped)
        if listing_complete:
            counts["gone"] += state.mark_gone(sync.name)
        if sync.after is not None and not result.interrupted:
            run_after(state, sync, storage, counts, stop)
    except StateError:
        state_failed = True  # the state file itself: not this sync's failure, the whole run's
        raise
    except FlexingestError as exc:
        result.error = redact(str(exc))
    except Exception as exc:
        result.error = redact(f"unexpected {type(exc).__name__}: {exc}")  # recorded, then raised
        raise
    finally:
        close_steps(steps)
        result.seconds = time.monotonic() - started
        if not listing_complete and result.error is None and not result.interrupted:
            result.error = "the listing did not complete"
        if not dry_run and not state_failed:
            outcome = "error" if result.error else "failed" if not result.ok else (
                "interrupted" if result.interrupted else "ok")
            try:
                if run_id is None:
                    run_id = state.start_run(sync.name, "pass", started_at, executor=_describe(executor))
                state.finish_run(run_id, counts, outcome, result.error)
            except FlexingestError as exc:
                result.error = result.error or str(exc)
    return result


def _list(storage: Storage, sync: Sync, state: State, stop: StopToken | None) -> bool:
    """Stream the listing into the state; True if it completed."""
    log.debug("%s: listing %s under %r", sync.name, storage.describe(), sync.prefix)
    state.begin_listing()
    now = time.time()
    filtered = bool(sync.include or sync.exclude or sync.min_size is not None or sync.max_size is not None
                    or sync.min_age is not None)
    for page in storage.iter_pages(sync.prefix):
        if stop is not None and stop.is_set():
            return False
        if filtered:
            state.add_listing([(*o, sync.skip_reason(o.key, o.size, None if o.modified is None else now - o.modified))
                               for o in page])
        else:
            state.add_listing([(*o, None) for o in page])
    return True


def process_keys(pipeline: Pipeline, connector_ref: str | int, keys: list[str], *, sync: Sync | None,
                 state: State, stop: StopToken | None = None,
                 on_progress: ProgressCallback | None = None, executor: Executor | None = None,
                 storage: Storage | None = None) -> PassResult:
    """``flexingest process``: exactly these keys, now, whatever the state says.

    With a sync, outcomes are recorded under it (a later pass will not redo them).
    ``storage``: the opened connector (the service's); by default it is opened here.
    """
    started = time.monotonic()
    name = sync.name if sync is not None else "process"
    result = PassResult(name)
    counts = result.counts
    redact = redactor(pipeline)
    steps: list[Step] = []
    try:
        connector = pipeline.connector(connector_ref)
        if storage is None:
            storage = open_connector(connector, pipeline.base_dir)
        steps, spec = _steps_for(pipeline, sync, connector.name, executor, state)
        concurrency = sync.concurrency if sync is not None else 8
        infos: list[ObjectInfo] = []
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            looked_up = pool.map(lambda k: _lookup(storage, k), dict.fromkeys(keys))
            for key, info, error in looked_up:
                if info is not None:
                    infos.append(info)
                else:
                    status = "gone" if isinstance(error, ObjectGone) else "failed"
                    counts[status] += 1
                    result.outcomes.append(Outcome(key, "", None, None, status, redact(str(error))))
        state.begin_listing()
        state.add_keys((i.key, i.version, i.size, i.modified) for i in infos)
        plan = state.plan(name, force=True)
        counts["listed"] = len(infos)
        counts["new"] = plan.to_process
        committer = Committer(state, name, steps, sync.max_attempts if sync else 3, counts, result.outcomes,
                              after=_after(sync))
        processing = _processing(storage, steps, spec, committer, executor, record_as=sync.name if sync else None,
                                 concurrency=concurrency, total=plan.to_process, stop=stop,
                                 on_progress=on_progress, redact=redact)
        complete = processing.run(state.planned())
        if processing.breaker.tripped:
            result.error = redact(processing.breaker.reason or "")
        result.interrupted = not complete and not processing.breaker.tripped
    except StateError:
        raise
    except FlexingestError as exc:
        result.error = redact(str(exc))
    finally:
        close_steps(steps)
        result.seconds = time.monotonic() - started
    return result


def _count_missed(state: State, sync: Sync, counts: dict[str, int]) -> None:
    """The reconciliation of a sync with events: objects new or changed in the listing although
    they changed while events were consumed, longer than ``lateness`` before the last receive
    from the queue: the notifications missed them (or the queue dropped them)."""
    from datetime import datetime

    stats = state.event_stats().get(sync.name, {})
    if not stats.get("since") or not stats.get("last_checked_at") or sync.events is None:
        return  # events never consumed yet: this listing is the backfill
    checked = datetime.fromisoformat(stats["last_checked_at"].replace("Z", "+00:00")).timestamp()
    counts["missed"] = state.missed_by_events(stats["since"], checked - sync.events.lateness.total_seconds())
    if counts["missed"]:
        log.warning("%s: the reconciliation listing found %d object(s) that events did not announce: check the "
                    "bucket's notifications to the queue", sync.name, counts["missed"])


def process_events(pipeline: Pipeline, sync: Sync, state: State, messages: list[Message], *,
                   storage: Storage | None = None, stop: StopToken | None = None,
                   executor: Executor | None = None, on_progress: ProgressCallback | None = None) -> PassResult:
    """The objects a batch of bucket-event messages names, through the same diff and steps as a pass.

    Each created object is looked at now (a notification may be stale, or the object gone
    since); the diff then decides as for a listing: a duplicate event, or one for a version
    already processed, processes nothing. Deleted objects are marked gone. A message is
    acknowledged once every object it names is committed (done, failed, skipped or filtered);
    one with an object left in flight (a stop) is not, and is delivered again.
    """
    started = time.monotonic()
    result = PassResult(sync.name, kind="events")
    counts = result.counts
    counts["messages"] = len(messages)
    redact = redactor(pipeline)
    steps: list[Step] = []
    unsettled: set[str] = set()
    usable = [m for m in messages if m.events]
    try:
        for m in messages:
            if m.invalid_reason:
                log.warning("%s: message %s is not a bucket notification (%s); it is left to the queue (its "
                            "dead-letter policy)", sync.name, m.id, m.invalid_reason)
        latest: dict[str, ObjectEvent] = {}
        for m in usable:
            for event in m.events:
                if event.key.startswith(sync.prefix) and not event.key.endswith("/"):
                    latest[event.key] = event  # in order of arrival: the last word on a key wins
        if storage is None:
            storage = open_connector(pipeline.connector(sync.connector), pipeline.base_dir)
        counts["listed"] = len(latest)  # the objects the messages name
        created = [k for k, e in latest.items() if e.kind == "created"]
        deleted = [k for k, e in latest.items() if e.kind == "deleted"]
        infos: list[ObjectInfo] = []
        with ThreadPoolExecutor(max_workers=max(1, min(sync.concurrency, len(created) or 1))) as pool:
            for key, info, error in pool.map(lambda k: _lookup(storage, k), created):
                if info is not None:
                    infos.append(info)
                elif isinstance(error, ObjectGone):
                    deleted.append(key)  # created, then deleted before we looked
                else:
                    unsettled.add(key)
                    log.warning("%s: %s", sync.name, error)
        if infos:
            steps, spec = _steps_for(pipeline, sync, storage.name, executor, state)
            now = time.time()
            state.begin_listing()
            state.add_listing([(*i, sync.skip_reason(i.key, i.size, None if i.modified is None else now - i.modified))
                               for i in infos])
            plan = state.plan(sync.name, ignore_changes=sync.on_change == "ignore")
            counts.update({k: plan.counts.get(k, 0) for k in ("new", "changed", "retry")})
            if plan.to_process:
                kept: list[Outcome] = []
                committer = Committer(state, sync.name, steps, sync.max_attempts, counts, kept, after=_after(sync))
                processing = _processing(storage, steps, spec, committer, executor, record_as=sync.name,
                                         concurrency=sync.concurrency, total=plan.to_process, stop=stop,
                                         on_progress=on_progress, redact=redact)
                planned = [row["key"] for batch in state.planned() for row in batch]
                complete = processing.run(state.planned())
                committed = {o.key for o in kept}
                unsettled.update(k for k in planned if k not in committed)
                if processing.breaker.tripped:
                    result.error = redact(processing.breaker.reason or "")
                result.interrupted = not complete and not processing.breaker.tripped
        counts["gone"] += state.mark_keys_gone(sync.name, deleted)
        if sync.after is not None and not result.interrupted:
            run_after(state, sync, storage, counts, stop)
        times = [e.time for e in latest.values() if e.time is not None]
        last = max(times) if times else None
        state.note_events(sync.name, len(messages), len(latest),
                          last.isoformat(timespec="seconds").replace("+00:00", "Z") if last else None,
                          max(0.0, time.time() - last.timestamp()) if last else None)
    except StateError:
        raise
    except FlexingestError as exc:
        result.error = redact(str(exc))
        unsettled.update(latest if "latest" in dir() else ())
    finally:
        close_steps(steps)
        result.seconds = time.monotonic() - started
    settle = [m for m in messages if m.ignored_reason or (m.events and not any(
        e.key in unsettled for e in m.events))]
    if result.error is None or settle:
        try:
            if settle:
                settle[0].source.ack_all(settle)
        except FlexingestError as exc:
            log.warning("%s: %s (those messages come again; what they name is already recorded)", sync.name, exc)
    counts["acked"] = len(settle)
    return result


def _after(sync: Sync | None) -> str | None:
    return sync.after.describe() if sync is not None and sync.after is not None else None


def run_after(state: State, sync: Sync, storage: Storage, counts: dict[str, int], stop: StopToken | None) -> None:
    """Carry out the sync's pending ``after:`` actions (see :mod:`flexingest.after`)."""
    assert sync.after is not None
    after = sync.after
    tried: set[str] = set()  # once a pass each: one that fails is tried again by the next pass
    while not (stop is not None and stop.is_set()):
        todo = [r for r in state.pending_after(sync.name, 1000 + len(tried)) if r["key"] not in tried]
        if not todo:
            return
        tried.update(r["key"] for r in todo)

        with ThreadPoolExecutor(max_workers=min(sync.concurrency, len(todo))) as pool:
            done = list(pool.map(lambda row: _act(storage, sync, row), todo))
        results = [(key, version, error) for key, version, error, _ in done]
        state.after_settled(sync.name, results)
        state.mark_keys_gone(sync.name, [key for key, _, _, removed in done if removed])  # deleted or moved
        failed = [(k, e) for k, _, e in results if e is not None]
        counts["after"] = counts.get("after", 0) + len(results) - len(failed)
        counts["after_failed"] = counts.get("after_failed", 0) + len(failed)
        for key, error in failed[:3]:
            log.warning("%s: after (%s) %s failed (tried again on the next pass): %s", sync.name,
                        after.describe(), key, error)


def _act(storage: Storage, sync: Sync, row: Any) -> tuple[str, str, str | None, bool]:
    """One pending action: (key, version, the error or None, whether the object left the bucket)."""
    from .after import act

    assert sync.after is not None
    try:
        what, removed = act(storage, sync.after, row["key"], row["version"], sync.prefix)
    except FlexingestError as exc:
        return row["key"], row["version"], str(exc), False
    log.debug("%s: %s: %s", sync.name, row["key"], what)
    return row["key"], row["version"], None, removed


def _describe(executor: Executor | None) -> str:
    return "threads" if executor is None else executor.describe()


def _steps_for(pipeline: Pipeline, sync: Sync | None, connector: str, executor: Executor | None,
               state: State) -> tuple[list[Step], WorkerSpec | None]:
    """The steps this process builds: all of them with threads; with an executor, only those
    that run on the coordinator (the workers build theirs), and the workers' spec."""
    if executor is None:
        return build_steps(pipeline, sync, state=state), None
    from .executors import WorkerSpec, check_secrets, split_steps

    calls = pipeline.steps_for(sync)
    on_workers = split_steps(calls)
    check_secrets(pipeline, executor)
    spec = WorkerSpec(str(pipeline.path.resolve()), pipeline.path.read_text(encoding="utf-8"),
                      sync.name if sync is not None else None, connector, sync.name if sync is not None else None,
                      on_workers)
    return build_steps(pipeline, sync, start=on_workers, state=state), spec


def _processing(storage: Storage, steps: list[Step], spec: WorkerSpec | None, committer: Committer,
                executor: Executor | None, **options: Any) -> Processing:
    if executor is None:
        return Processing(storage, steps, committer, **options)
    return Processing(storage, [], committer, executor=executor, spec=spec, coordinator_steps=steps, **options)


def _lookup(storage: Storage, key: str) -> tuple[str, ObjectInfo | None, FlexingestError | None]:
    try:
        return key, storage.info(key), None
    except ObjectGone:
        return key, None, ObjectGone(f"{storage.describe(key)}: not found")  # no listing to have been deleted after
    except FlexingestError as exc:
        return key, None, exc

