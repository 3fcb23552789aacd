"""One sync pass: list, diff, process, record.

1. List the connector under the sync's prefix, page by page, into the state's
   temporary listing table (filters applied as each key arrives).
2. Diff the listing against the state in SQL: new, changed, retry, done, dead, filtered.
3. Push new/changed/retry objects through the steps, ``concurrency`` at a time, in
   worker threads (:class:`Processing`): dispatch, collection, the :class:`Breaker` that
   stops a pass against an outage, and the :class:`Committer` that records outcomes in
   batches after every step has made its outputs durable.
4. If the listing was complete, mark what it no longer shows as gone. Record the run.

An object becomes ``done`` only after every step succeeded and its row is committed;
anything in flight when the process dies is simply processed again next time. After a
stop is requested no object starts; those in flight get the grace time, then the pass
returns without them (they are processed again by the next pass).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Iterable

from . import metrics
from .connectors import Storage, open_connector
from .destinations import open_destination
from .exceptions import (
    DestinationUnavailable,
    FlexingestError,
    ObjectGone,
    ObjectSkipped,
    PluginError,
    StateError,
    StepError,
)
from .objects import ObjectInfo, Source
from .state import Outcome, State, now_iso
from .steps import Record, Step, StepContext, run_steps

if TYPE_CHECKING:
    import sqlite3

    from .config import Pipeline, Sync

log = logging.getLogger(__name__)

COMMIT_EVERY = 0.5  # seconds between state commits while processing
COMMIT_BATCH = 500  # or this many outcomes, whichever comes first
TRANSIENT_RETRIES = 2  # in-pass retries of an object that failed transiently (the clients retry too)
BACKOFF = 0.5  # first retry delay, doubled each time (with jitter)
BREAKER = 3  # this many objects in a row failing transiently: storage is down, stop the pass
COUNTS = ("listed", "new", "changed", "retry", "done", "skipped", "failed", "dead", "gone")


class StopToken:
    """Asks a pass to stop taking new objects; in-flight ones get ``grace`` seconds."""

    def __init__(self, grace: float = 30.0) -> None:
        self.grace = grace
        self._event = threading.Event()
        self.deadline: float | None = None

    def request(self) -> None:
        if not self._event.is_set():
            self.deadline = time.monotonic() + self.grace
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


#: Called as objects finish: (objects finished, objects to process, bytes finished).
ProgressCallback = Callable[[int, int, int], None]


@dataclass
class PassResult:
    sync: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    seconds: float = 0.0
    error: str | None = None
    interrupted: bool = False
    outcomes: list[Outcome] = field(default_factory=list)  # filled by `process` only

    @property
    def ok(self) -> bool:
        return self.error is None and self.counts.get("failed", 0) == 0 and self.counts.get("dead", 0) == 0

    def summary(self) -> str:
        c = self.counts
        skipped = f", skipped {c['skipped']}" if c.get("skipped") else ""
        text = (f"{self.sync}: listed {c.get('listed', 0)}, new {c.get('new', 0)}, changed {c.get('changed', 0)}, "
                f"retried {c.get('retry', 0)}, done {c.get('done', 0)}{skipped}, failed {c.get('failed', 0)}, "
                f"dead {c.get('dead', 0)}, gone {c.get('gone', 0)} in {self.seconds:.1f}s")
        if self.interrupted:
            text += " (stopped early: the rest is processed on the next pass)"
        if self.error:
            text += f"; error: {self.error}"
        return text


# --------------------------------------------------------------------------- steps


def step_context(pipeline: Pipeline) -> StepContext:
    """How steps of this pipeline open destinations: a URL, or a path in a connector."""
    return StepContext(base_dir=pipeline.base_dir,
                       open_destination=lambda url, connector: open_destination(pipeline, url, connector))


def build_steps(pipeline: Pipeline, sync: Sync | None) -> list[Step]:
    context = step_context(pipeline)
    built: list[Step] = []
    try:
        for call in pipeline.steps_for(sync):
            built.append(call.build(context))
    except FlexingestError:
        close_steps(built)
        raise
    except Exception as exc:  # noqa: BLE001 - a step's constructor failing
        close_steps(built)
        raise PluginError(f"step {call.name!r} could not start: {type(exc).__name__}: {exc}") from exc
    return built


def close_steps(steps: Iterable[Step]) -> None:
    for step in steps:
        try:
            step.close()
        except Exception:  # noqa: BLE001
            log.exception("closing step %s failed", type(step).__name__)


def redactor(pipeline: Pipeline) -> Callable[[str], str]:
    """Masks every secret of the pipeline in a text (errors are stored and shown)."""
    from .redact import Redactor

    return Redactor(pipeline.secrets()).mask


# --------------------------------------------------------------------------- one object


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z") if ts is not None else None


def new_record(connector: str, sync: str | None, info: ObjectInfo) -> Record:
    return {"connector": connector, "sync": sync, "key": info.key, "version": info.version,
            "size": info.size, "modified": _iso(info.modified), "text": None, "metadata": {}}


def process_object(storage: Storage, steps: list[Step], info: ObjectInfo, sync: str | None,
                   halted: Callable[[], bool] = lambda: False,
                   redact: Callable[[str], str] | None = None) -> Outcome | None:
    """Run one object through the steps; transient failures are retried with backoff.

    Returns None, having done nothing, when ``halted()`` says the pass is stopping.
    """
    if halted():
        return None
    redact = redact or storage.redact
    started = time.monotonic()
    delay = BACKOFF
    attempt = restarts = 0
    while True:
        source = Source(storage, info)
        try:
            run_steps(steps, new_record(storage.name, sync, info), source)
            if source.read_version not in (None, info.version) and restarts < 2:
                # overwritten since the listing: what was read is newer than what was listed;
                # process the object again as it is now, so that the record and the state agree
                log.info("%s: changed since it was listed; processing the new version", info.key)
                info = storage.info(info.key)
                restarts += 1
                continue
            log.debug("%s: done in %.3fs", info.key, time.monotonic() - started)
            return Outcome(info.key, info.version, info.size, info.modified, "done")
        except ObjectSkipped as exc:
            return Outcome(info.key, info.version, info.size, info.modified, "skipped", redact(str(exc)))
        except Exception as exc:  # noqa: BLE001 - one bad object never stops the others
            error = _as_error(exc, info.key)
            if isinstance(error, ObjectGone):
                return Outcome(info.key, info.version, info.size, info.modified, "gone")
            retry = error.transient and not getattr(error, "clients_retried", False)
            if retry and attempt < TRANSIENT_RETRIES and not halted():
                attempt += 1
                log.info("%s: %s (transient; attempt %d of %d in %.1fs)", info.key, error, attempt + 1,
                         TRANSIENT_RETRIES + 1, delay)
                time.sleep(delay * (0.5 + random.random()))
                delay *= 2
                continue
            return Outcome(info.key, info.version, info.size, info.modified, "failed", redact(str(error)),
                           transient=error.transient, permanent=error.permanent,
                           halt=isinstance(error, DestinationUnavailable))


def _as_error(exc: Exception, key: str) -> FlexingestError:
    """A step's exception as a flexingest error. Sources and destinations translate their own
    errors at their boundary; anything else a step raises is that step's failure."""
    if isinstance(exc, FlexingestError):
        return exc
    log.debug("object %s: unexpected %s", key, type(exc).__name__, exc_info=True)
    return StepError(f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- the parts of a pass


class Breaker:
    """Stops a pass that cannot succeed: at once when a destination is missing or refuses us,
    and after ``limit`` objects in a row failed with an outage (timeouts, 5xx, unreachable)."""

    def __init__(self, limit: int = BREAKER) -> None:
        self.limit = limit
        self.in_a_row = 0
        self.reason: str | None = None

    def record(self, outcome: Outcome) -> None:
        if self.reason is not None:
            return
        if outcome.halt:
            self.reason = outcome.error or "a destination is unavailable"
        elif outcome.status == "failed" and outcome.transient:
            self.in_a_row += 1
            if self.in_a_row >= self.limit:
                self.reason = (f"stopped after {self.in_a_row} objects in a row failed with transient errors "
                               f"(an outage: no attempt was charged to them); last: {outcome.error}")
        else:
            self.in_a_row = 0

    @property
    def tripped(self) -> bool:
        return self.reason is not None


class Committer:
    """Collects outcomes and commits them in batches, after the steps made their outputs durable."""

    def __init__(self, state: State, sync: str, steps: list[Step], max_attempts: int,
                 counts: dict[str, int], keep: list[Outcome] | None) -> None:
        self.state, self.sync, self.steps, self.max_attempts = state, sync, steps, max_attempts
        self.counts = counts
        self.keep = keep
        self.pending: list[Outcome] = []
        self.last = time.monotonic()

    def add(self, outcome: Outcome) -> None:
        self.pending.append(outcome)
        if len(self.pending) >= COMMIT_BATCH or time.monotonic() - self.last >= COMMIT_EVERY:
            self.commit()

    def commit(self) -> None:
        self.last = time.monotonic()
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        try:
            for step in self.steps:
                step.flush()
        except Exception as exc:  # noqa: BLE001 - outputs not durable: do not record them done
            message = f"could not make outputs durable: {exc}"
            log.error("%s: %s", self.sync, message)
            batch = [Outcome(o.key, o.version, o.size, o.modified, "failed", message)
                     if o.status in ("done", "skipped") else o for o in batch]
        result = self.state.record(self.sync, batch, self.max_attempts)
        metrics.observe_outcomes(self.sync, batch)
        for o in batch:
            self.counts[o.status] = self.counts.get(o.status, 0) + 1
        self.counts["dead"] += result["dead"]
        self.counts["failed"] -= result["dead"]
        if self.keep is not None:
            self.keep.extend(batch)
        for o in batch:
            if o.status == "failed":
                log.warning("%s: %s failed: %s", self.sync, o.key, o.error)


class Processing:
    """The planned objects of one pass through the steps, ``concurrency`` at a time."""

    def __init__(self, storage: Storage, steps: list[Step], committer: Committer, *, record_as: str | None,
                 concurrency: int, total: int, stop: StopToken | None,
                 on_progress: ProgressCallback | None, redact: Callable[[str], str]) -> None:
        self.storage, self.steps, self.committer = storage, steps, committer
        self.record_as, self.concurrency, self.total = record_as, concurrency, total
        self.stop, self.on_progress, self.redact = stop, on_progress, redact
        self.breaker = Breaker()
        self._halt = threading.Event()  # set by a worker whose object says no other can succeed
        self.window = concurrency * 2  # submitted ahead, so that a worker never waits for the next object
        self.in_flight: dict[Future[Outcome | None], ObjectInfo] = {}
        self.finished: queue.SimpleQueue[Future[Outcome | None]] = queue.SimpleQueue()  # O(1) per object
        self.done = self.done_bytes = 0

    def halted(self) -> bool:
        """No object may start: a stop was requested or the breaker tripped."""
        return self._halt.is_set() or self.breaker.tripped or (self.stop is not None and self.stop.is_set())

    def _work(self, info: ObjectInfo) -> Outcome | None:
        outcome = process_object(self.storage, self.steps, info, self.record_as, self.halted, self.redact)
        if outcome is not None and outcome.halt:
            self._halt.set()  # at once, before the next object queued here starts
        return outcome

    def run(self, batches: Iterable[list[sqlite3.Row]]) -> bool:
        """Process every planned object; returns False if the pass stopped before the end."""
        executor = ThreadPoolExecutor(max_workers=self.concurrency,
                                      thread_name_prefix=f"flexingest-{self.committer.sync}")
        try:
            complete = self._dispatch(executor, batches)
            complete = self._drain() and complete
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            try:
                self.committer.commit()  # keep what finished, if the state can still take it
            except FlexingestError as exc:
                log.error("%s: %s", self.committer.sync, exc)
            raise
        self.committer.commit()
        executor.shutdown(wait=not self.in_flight, cancel_futures=True)
        return complete

    def _dispatch(self, executor: ThreadPoolExecutor, batches: Iterable[list[sqlite3.Row]]) -> bool:
        for batch in batches:
            for row in batch:
                while len(self.in_flight) >= self.window and not self.halted():
                    self._collect(COMMIT_EVERY)
                if self.halted():
                    return False
                info = ObjectInfo(row["key"], row["version"], row["size"], row["modified"])
                future = executor.submit(self._work, info)
                self.in_flight[future] = info
                future.add_done_callback(self.finished.put)
            self._collect(0)
        return True

    def _collect(self, timeout: float) -> None:
        if not self.in_flight:
            return
        done: list[Future[Outcome | None]] = []
        try:
            done.append(self.finished.get(timeout=timeout) if timeout > 0 else self.finished.get_nowait())
            while True:
                done.append(self.finished.get_nowait())
        except queue.Empty:
            pass
        for future in done:
            info = self.in_flight.pop(future)
            outcome = None if future.cancelled() else future.result()
            if outcome is None:
                continue  # not started: the pass is stopping
            self.committer.add(outcome)
            was_tripped = self.breaker.tripped
            self.breaker.record(outcome)
            if self.breaker.tripped and not was_tripped:
                metrics.observe_breaker(self.committer.sync)
                log.error("%s: %s; the rest is left for the next pass", self.committer.sync, self.breaker.reason)
            self.done += 1
            self.done_bytes += info.size or 0
            if self.on_progress:
                self.on_progress(self.done, self.total, self.done_bytes)
        if not done:
            self.committer.commit()

    def _drain(self) -> bool:
        """Wait for the objects in flight: after a stop, no longer than the grace time."""
        if self.halted():
            for future in list(self.in_flight):
                future.cancel()  # those still waiting for a worker never start
        while self.in_flight:
            remaining = self.stop.remaining() if self.stop is not None and self.stop.is_set() else None
            if remaining is not None and remaining <= 0:
                log.warning("%s: grace time over; %d object(s) still in flight are left for the next pass",
                            self.committer.sync, len(self.in_flight))
                return False
            self._collect(COMMIT_EVERY if remaining is None else min(COMMIT_EVERY, remaining))
        return not self.halted()


# --------------------------------------------------------------------------- passes


def run_pass(pipeline: Pipeline, sync: Sync, state: State, *, stop: StopToken | None = None,
             dry_run: bool = False, on_progress: ProgressCallback | None = None,
             on_explain: Callable[[str, str, str | None], None] | None = None,
             storage: Storage | None = None) -> PassResult:
    """One pass of ``sync``: see the module docstring. ``storage`` is the opened connector
    (the service keeps one per connector for its life); by default the pass opens it."""
    started = time.monotonic()
    result = PassResult(sync.name)
    counts = result.counts
    redact = redactor(pipeline)
    steps: list[Step] = []
    listing_complete = False
    state_failed = False
    run_id = None
    started_at = now_iso()
    try:
        if storage is None:
            storage = open_connector(pipeline.connector(sync.connector), pipeline.base_dir)
        if not dry_run:
            steps = build_steps(pipeline, sync)
        listing_started = time.monotonic()
        listing_complete = _list(storage, sync, state, stop)
        if not dry_run:  # the first write: after the state's integrity check, run beside the listing
            run_id = state.start_run(sync.name, "pass", started_at)
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
        if plan.to_process and not result.interrupted:
            log.info("%s: %d to process (%d new, %d changed, %d to retry) of %d listed", sync.name,
                     plan.to_process, counts["new"], counts["changed"], counts["retry"], counts["listed"])
            committer = Committer(state, sync.name, steps, sync.max_attempts, counts, None)
            processing = Processing(storage, steps, committer, record_as=sync.name, concurrency=sync.concurrency,
                                    total=plan.to_process, stop=stop,
                                    on_progress=metrics.progress(sync.name, on_progress), redact=redact)
            complete = processing.run(state.planned())
            if processing.breaker.tripped:
                result.error = redact(processing.breaker.reason or "")
            result.interrupted = result.interrupted or (not complete and not processing.breaker.tripped)
        if listing_complete:
            counts["gone"] += state.mark_gone(sync.name)
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
                    run_id = state.start_run(sync.name, "pass", started_at)
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
                 on_progress: ProgressCallback | None = None, storage: Storage | None = None) -> PassResult:
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
        if storage is None:
            storage = open_connector(pipeline.connector(connector_ref), pipeline.base_dir)
        steps = build_steps(pipeline, sync)
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
        committer = Committer(state, name, steps, sync.max_attempts if sync else 3, counts, result.outcomes)
        processing = Processing(storage, steps, committer, record_as=sync.name if sync else None,
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


def _lookup(storage: Storage, key: str) -> tuple[str, ObjectInfo | None, FlexingestError | None]:
    try:
        return key, storage.info(key), None
    except ObjectGone:
        return key, None, ObjectGone(f"{storage.describe(key)}: not found")  # no listing to have been deleted after
    except FlexingestError as exc:
        return key, None, exc

