"""The objects of a pass through the steps: one object, then the named parts of a pass.

- :func:`process_object`: one object through the steps, transient failures retried.
- :class:`Processing`: dispatch (``concurrency`` objects in flight, in this process's threads
  or in batches to an executor's workers), collection, the :class:`Breaker` that stops a pass
  against an outage, and the :class:`Committer` that records outcomes in batches after every
  step made its outputs durable.
- :class:`StopToken`: after a stop no object starts; those in flight get the grace time.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from . import metrics
from .destinations import open_destination
from .exceptions import DestinationUnavailable, FlexingestError, ObjectGone, ObjectSkipped, PluginError, StepError
from .objects import ObjectInfo, Source, processing
from .state import Outcome, State
from .steps import Record, Step, StepContext, run_steps

if TYPE_CHECKING:
    import sqlite3

    from .config import Pipeline, Sync
    from .connectors import Storage
    from .executors import Executor, Result, WorkerSpec

log = logging.getLogger(__name__)

COMMIT_EVERY = 0.5  # seconds between state commits while processing
COMMIT_BATCH = 500  # or this many outcomes, whichever comes first
TRANSIENT_RETRIES = 2  # in-pass retries of an object that failed transiently (the clients retry too)
BACKOFF = 0.5  # first retry delay, doubled each time (with jitter)
BREAKER = 3  # this many objects in a row failing transiently: storage is down, stop the pass

#: Called as objects finish: (objects finished, objects to process, bytes finished).
ProgressCallback = Callable[[int, int, int], None]


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

    @property
    def event(self) -> threading.Event:
        """Set with the stop: for what waits on an event (an event source's long poll)."""
        return self._event

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


# --------------------------------------------------------------------------- steps


def step_context(pipeline: Pipeline, state: State | None = None) -> StepContext:
    """How steps of this pipeline open destinations (a URL, or a path in a connector), and what
    the state last committed of their output files."""
    return StepContext(base_dir=pipeline.base_dir,
                       open_destination=lambda url, connector: open_destination(pipeline, url, connector),
                       committed_length=state.output_length if state is not None else lambda path, size: size)


def build_steps(pipeline: Pipeline, sync: Sync | None, *, start: int = 0, limit: int | None = None,
                state: State | None = None) -> list[Step]:
    """The steps of ``sync`` (or the top-level ones), ``[start:limit]`` of them."""
    context = step_context(pipeline, state)
    built: list[Step] = []
    try:
        for call in pipeline.steps_for(sync)[start:limit]:
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


# --------------------------------------------------------------------------- one object


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z") if ts is not None else None


def new_record(connector: str, sync: str | None, info: ObjectInfo) -> Record:
    return {"connector": connector, "sync": sync, "key": info.key, "version": info.version,
            "size": info.size, "modified": _iso(info.modified), "text": None, "metadata": {}}


def process_object(storage: Storage, steps: Sequence[Step], info: ObjectInfo, sync: str | None,
                   halted: Callable[[], bool] = lambda: False, redact: Callable[[str], str] | None = None, *,
                   keep_records: bool = False) -> tuple[Outcome | None, list[Record] | None]:
    """Run one object through the steps; transient failures are retried with backoff.

    Returns ``(None, None)``, having done nothing, when ``halted()`` says the pass is
    stopping; with ``keep_records``, the records that came out of the steps.
    """
    if halted():
        return None, None
    redact = redact or storage.redact
    started = time.monotonic()
    delay = BACKOFF
    attempt = restarts = 0
    while True:
        source = Source(storage, info)
        try:
            with processing(info):
                records = run_steps(steps, new_record(storage.name, sync, info), source)
            if source.read_version not in (None, info.version) and restarts < 2:
                # overwritten since the listing: what was read is newer than what was listed;
                # process the object again as it is now, so that the record and the state agree
                log.info("%s: changed since it was listed; processing the new version", info.key)
                info = storage.info(info.key)
                restarts += 1
                continue
            log.debug("%s: done in %.3fs", info.key, time.monotonic() - started)
            return Outcome(info.key, info.version, info.size, info.modified, "done"), (
                records if keep_records else None)
        except ObjectSkipped as exc:
            return Outcome(info.key, info.version, info.size, info.modified, "skipped", redact(str(exc))), None
        except Exception as exc:  # noqa: BLE001 - one bad object never stops the others
            error = as_error(exc, info.key)
            if isinstance(error, ObjectGone):
                return Outcome(info.key, info.version, info.size, info.modified, "gone"), None
            retry = error.transient and not getattr(error, "clients_retried", False)
            if retry and attempt < TRANSIENT_RETRIES and not halted():
                attempt += 1
                log.info("%s: %s (transient; attempt %d of %d in %.1fs)", info.key, error, attempt + 1,
                         TRANSIENT_RETRIES + 1, delay)
                time.sleep(delay * (0.5 + random.random()))
                delay *= 2
                continue
            return failed(info, redact(str(error)), error), None


def failed(info: ObjectInfo, message: str, error: FlexingestError) -> Outcome:
    return Outcome(info.key, info.version, info.size, info.modified, "failed", message, transient=error.transient,
                   permanent=error.permanent, halt=isinstance(error, DestinationUnavailable))


def as_error(exc: BaseException, key: str) -> FlexingestError:
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

    def trip(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    @property
    def tripped(self) -> bool:
        return self.reason is not None


class Committer:
    """Collects outcomes and commits them in batches, after the steps made their outputs durable."""

    def __init__(self, state: State, sync: str, steps: list[Step], max_attempts: int,
                 counts: dict[str, int], keep: list[Outcome] | None, after: str | None = None) -> None:
        self.state, self.sync, self.steps, self.max_attempts = state, sync, steps, max_attempts
        self.after = after  # the sync's after: action, recorded as pending with each done
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
        settled = [(o.key, o.version, o.status) for o in batch]
        held = contextlib.ExitStack()  # outputs held (appended, fsync'ed) until the commit
        lengths: dict[str, int] = {}
        try:
            for step in self.steps:
                lengths.update(held.enter_context(step.committing(settled)))
        except Exception as exc:  # noqa: BLE001 - outputs not durable: do not record them done
            held.__exit__(type(exc), exc, exc.__traceback__)  # the steps take back what they appended
            message = f"could not make outputs durable: {exc}"
            log.error("%s: %s", self.sync, message)
            batch = [Outcome(o.key, o.version, o.size, o.modified, "failed", message)
                     if o.status in ("done", "skipped") else o for o in batch]
            result = self.state.record(self.sync, batch, self.max_attempts)
        else:
            with held:  # a commit that fails makes the steps take back what they appended
                result = self.state.record(self.sync, batch, self.max_attempts, outputs=lengths,
                                           after=self.after)
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
    """The planned objects of one pass through the steps, ``concurrency`` at a time.

    In this process's threads (``executor`` None), or in batches to an executor's workers,
    which run the first steps; the coordinator runs ``coordinator_steps`` (those from the
    first that must run here, such as ``write_jsonl``) on the records they send back.
    """

    def __init__(self, storage: Storage, steps: list[Step], committer: Committer, *, record_as: str | None,
                 concurrency: int, total: int, stop: StopToken | None,
                 on_progress: ProgressCallback | None, redact: Callable[[str], str],
                 executor: Executor | None = None, spec: WorkerSpec | None = None,
                 coordinator_steps: Sequence[Step] = ()) -> None:
        self.storage, self.steps, self.committer = storage, steps, committer
        self.coordinator_steps = coordinator_steps
        self.record_as, self.concurrency, self.total = record_as, concurrency, total
        self.stop, self.on_progress, self.redact = stop, on_progress, redact
        self.executor, self.spec = executor, spec
        self.breaker = Breaker()
        self._halt = threading.Event()  # set by a worker whose object says no other can succeed
        # threads: submitted ahead, so that a worker never waits for the next object
        self.window = concurrency * 2 if executor is None else concurrency
        self.in_flight: dict[Future[list[Result]], tuple[list[ObjectInfo], float]] = {}
        self.in_flight_objects = 0
        self.finished: queue.SimpleQueue[Future[list[Result]]] = queue.SimpleQueue()  # O(1) per object
        self.done = self.done_bytes = 0
        self._seconds_per_object: float | None = None
        self._resubmitted: set[str] = set()  # keys already sent alone after a worker died

    def halted(self) -> bool:
        """No object may start: a stop was requested or the breaker tripped."""
        return self._halt.is_set() or self.breaker.tripped or (self.stop is not None and self.stop.is_set())

    # -- dispatch

    def run(self, batches: Iterable[list[sqlite3.Row]]) -> bool:
        """Process every planned object; returns False if the pass stopped before the end."""
        threads = ThreadPoolExecutor(max_workers=self.concurrency,
                                     thread_name_prefix=f"flexingest-{self.committer.sync}") \
            if self.executor is None else None
        try:
            complete = self._dispatch(threads, batches)
            complete = self._drain() and complete
        except BaseException:
            if threads is not None:
                threads.shutdown(wait=False, cancel_futures=True)
            try:
                self.committer.commit()  # keep what finished, if the state can still take it
            except FlexingestError as exc:
                log.error("%s: %s", self.committer.sync, exc)
            raise
        self.committer.commit()
        if threads is not None:
            threads.shutdown(wait=not self.in_flight, cancel_futures=True)
        return complete

    def _dispatch(self, threads: ThreadPoolExecutor | None, batches: Iterable[list[sqlite3.Row]]) -> bool:
        pending: list[ObjectInfo] = []
        for batch in batches:
            for row in batch:
                info = ObjectInfo(row["key"], row["version"], row["size"], row["modified"])
                if threads is not None:
                    if not self._wait_for_room(1):
                        return False
                    self._track(threads.submit(self._work, info), [info])
                    continue
                pending.append(info)
                size = self._batch_size()
                if len(pending) >= size:
                    if not self._send(pending[:size]):
                        return False
                    pending = pending[size:]
            self._collect(0)
        while pending:
            size = self._batch_size()
            if not self._send(pending[:size]):
                return False
            pending = pending[size:]
        return True

    def _batch_size(self) -> int:
        assert self.executor is not None
        return self.executor.batch_size(self.concurrency, self._seconds_per_object)

    def _wait_for_room(self, n: int) -> bool:
        while self.in_flight_objects + n > self.window and not self.halted():
            self._collect(COMMIT_EVERY)
        return not self.halted()

    def _send(self, infos: list[ObjectInfo], *, wait: bool = True) -> bool:
        assert self.executor is not None and self.spec is not None
        if wait and not self._wait_for_room(len(infos)):
            return False
        self._track(self.executor.submit(self.spec, [tuple(i) for i in infos]), infos)  # type: ignore[misc]
        return True

    def _track(self, future: Future[list[Result]], infos: list[ObjectInfo]) -> None:
        self.in_flight[future] = (infos, time.monotonic())
        self.in_flight_objects += len(infos)
        future.add_done_callback(self.finished.put)

    def _work(self, info: ObjectInfo) -> list[Result]:
        outcome, _ = process_object(self.storage, self.steps, info, self.record_as, self.halted, self.redact)
        if outcome is not None and outcome.halt:
            self._halt.set()  # at once, before the next object queued here starts
        return [(outcome, None)]

    # -- collection

    def _collect(self, timeout: float) -> None:
        if not self.in_flight:
            return
        done: list[Future[list[Result]]] = []
        try:
            done.append(self.finished.get(timeout=timeout) if timeout > 0 else self.finished.get_nowait())
            while True:
                done.append(self.finished.get_nowait())
        except queue.Empty:
            pass
        for future in done:
            infos, submitted = self.in_flight.pop(future)
            self.in_flight_objects -= len(infos)
            for info, (outcome, records) in zip(infos, self._results(future, infos)):
                if outcome is None:
                    continue  # not started: the pass is stopping
                if records is not None and outcome.status == "done":
                    outcome = self._coordinator_steps(info, outcome, records)
                self._finish(info, outcome)
            if self.executor is not None and len(infos) > 0 and not future.cancelled():
                self._note_speed((time.monotonic() - submitted) / len(infos))
        if not done:
            self.committer.commit()

    def _results(self, future: Future[list[Result]], infos: list[ObjectInfo]) -> list[Result]:
        """A batch's results; a batch lost with its worker is sent again, object by object."""
        if future.cancelled():
            return [(None, None)] * len(infos)
        try:
            return future.result()
        except Exception as exc:  # noqa: BLE001 - the executor's failure, not the objects'
            return self._lost(infos, exc)

    def _lost(self, infos: list[ObjectInfo], exc: BaseException) -> list[Result]:
        from concurrent.futures.process import BrokenProcessPool

        from .executors import ExecutorUnavailable

        died = isinstance(exc, BrokenProcessPool) or "KilledWorker" in str(exc) or "workers died" in str(exc)
        if not died:
            if not isinstance(exc, ExecutorUnavailable):
                exc = ExecutorUnavailable(f"workers could not process a batch: {type(exc).__name__}: {exc}")
            self.breaker.trip(self.redact(str(exc)))  # nothing charged: those objects wait for the next pass
            return [(None, None)] * len(infos)
        assert self.executor is not None
        if isinstance(exc, BrokenProcessPool):
            getattr(self.executor, "reset", lambda: None)()
        results: list[Result] = []
        for info in infos:
            if info.key in self._resubmitted:  # sent alone, and its worker died again: the object's doing
                error = StepError("the worker process died while processing this object, twice")
                results.append((failed(info, str(error), error), None))
                continue
            if not self.halted():
                self._resubmitted.add(info.key)
                self._send([info], wait=False)
            results.append((None, None))
        log.warning("%s: a worker died with %d object(s) in flight; they are processed again", self.committer.sync,
                    len(infos))
        return results

    def _coordinator_steps(self, info: ObjectInfo, outcome: Outcome, records: list[Record]) -> Outcome:
        source = Source(self.storage, info)
        try:
            with processing(info):
                for record in records:
                    run_steps(self.coordinator_steps, record, source)
        except ObjectSkipped as exc:
            return Outcome(info.key, info.version, info.size, info.modified, "skipped", self.redact(str(exc)))
        except Exception as exc:  # noqa: BLE001 - one bad object never stops the others
            return failed(info, self.redact(str(as_error(exc, info.key))), as_error(exc, info.key))
        return outcome

    def _note_speed(self, seconds: float) -> None:
        previous = self._seconds_per_object
        self._seconds_per_object = seconds if previous is None else 0.7 * previous + 0.3 * seconds

    def _finish(self, info: ObjectInfo, outcome: Outcome) -> None:
        self.committer.add(outcome)
        was_tripped = self.breaker.tripped
        self.breaker.record(outcome)
        if outcome.halt:
            self._halt.set()
        if self.breaker.tripped and not was_tripped:
            metrics.observe_breaker(self.committer.sync)
            log.error("%s: %s; the rest is left for the next pass", self.committer.sync, self.breaker.reason)
        self.done += 1
        self.done_bytes += info.size or 0
        if self.on_progress:
            self.on_progress(self.done, self.total, self.done_bytes)

    def _drain(self) -> bool:
        """Wait for the objects in flight: after a stop, no longer than the grace time."""
        cancelled = False
        while self.in_flight:
            if self.halted() and not cancelled:
                cancelled = True
                for future in list(self.in_flight):
                    future.cancel()  # those still waiting for a worker never start
            remaining = self.stop.remaining() if self.stop is not None and self.stop.is_set() else None
            if remaining is not None and remaining <= 0:
                log.warning("%s: grace time over; %d object(s) still in flight are left for the next pass",
                            self.committer.sync, self.in_flight_objects)
                return False
            self._collect(COMMIT_EVERY if remaining is None else min(COMMIT_EVERY, remaining))
        return not self.halted()

