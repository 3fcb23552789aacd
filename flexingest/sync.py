"""One sync pass: list, diff, process, record.

1. List the connector under the sync's prefix, page by page, into the state's
   temporary listing table (filters applied as each key arrives).
2. Diff the listing against the state in SQL: new, changed, retry, done, dead, filtered.
3. Push new/changed/retry objects through the steps, ``concurrency`` at a time, in
   worker threads; commit outcomes in batches, after every step has flushed.
4. If the listing was complete, mark what it no longer shows as gone. Record the run.

An object becomes ``done`` only after every step succeeded and its row is committed;
anything in flight when the process dies is simply processed again next time.
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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .connectors import ObjectInfo, Source, Storage, _translate, open_connector
from .exceptions import FlexingestError, ObjectGone, ObjectSkipped, StateError, StepError
from .state import Outcome, State, now_iso
from .steps import Step, StepContext, run_steps

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from .config import Pipeline, Sync

log = logging.getLogger(__name__)

COMMIT_EVERY = 0.5  # seconds between state commits while processing
COMMIT_BATCH = 500  # or this many outcomes, whichever comes first
TRANSIENT_RETRIES = 2  # in-pass retries of an object that failed transiently (the clients retry too)
BACKOFF = 0.5  # first retry delay, doubled each time (with jitter)
BREAKER = 3  # this many objects in a row failing transiently: storage is down, stop the pass


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
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    interrupted: bool = False
    outcomes: list[Outcome] = field(default_factory=list)  # filled by `process` only

    @property
    def ok(self) -> bool:
        return self.error is None and self.counts.get("failed", 0) == 0 and self.counts.get("dead", 0) == 0

    def summary(self) -> str:
        c = self.counts
        text = (f"{self.sync}: listed {c.get('listed', 0)}, new {c.get('new', 0)}, changed {c.get('changed', 0)}, "
                f"retried {c.get('retry', 0)}, done {c.get('done', 0)}, failed {c.get('failed', 0)}, "
                f"dead {c.get('dead', 0)}, gone {c.get('gone', 0)} in {self.seconds:.1f}s")
        if self.interrupted:
            text += " (stopped early: the rest is processed on the next pass)"
        if self.error:
            text += f"; error: {self.error}"
        return text


def step_context(pipeline: Pipeline) -> StepContext:
    """How steps of this pipeline open destinations: a URL, or a path in a connector."""
    import os

    def open_destination(url: str, connector: str | None) -> tuple[AbstractFileSystem, str]:
        if connector is not None:
            storage = open_connector(pipeline.connector(connector), pipeline.base_dir)
            if "://" in url:  # a URL of the connector's own kind: any bucket its credentials open
                from .loader import destination_url_problem

                problem = destination_url_problem(url, connector, storage.kind)
                if problem:
                    raise FlexingestError(f"destination {url}: {problem}")
                return storage.fs, storage.fs._strip_protocol(url).rstrip("/")
            if storage.kind == "local":
                return storage.fs, os.path.join(storage.root, url)
            return storage.fs, f"{storage.root}/{url.strip('/')}".rstrip("/")
        if "://" not in url:
            path = Path(url).expanduser()
            from fsspec.implementations.local import LocalFileSystem

            return LocalFileSystem(), str(path if path.is_absolute() else pipeline.base_dir / path)
        from fsspec.core import url_to_fs

        try:
            return url_to_fs(url)  # type: ignore[no-any-return]
        except ImportError as exc:
            raise FlexingestError(f"cannot open {url}: {exc}") from None

    return StepContext(base_dir=pipeline.base_dir, open_destination=open_destination)


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
        raise FlexingestError(f"step {call.name!r} could not start: {type(exc).__name__}: {exc}") from exc
    return built


def close_steps(steps: Iterable[Step]) -> None:
    for step in steps:
        try:
            step.close()
        except Exception:  # noqa: BLE001
            log.exception("closing step %s failed", type(step).__name__)


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z") if ts is not None else None


def redactor(pipeline: Pipeline) -> Callable[[str], str]:
    """Masks every secret of the pipeline in a text (errors are stored and shown)."""
    secrets = sorted(pipeline.secrets(), key=len, reverse=True)

    def redact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "**********")
        return text

    return redact


def process_object(storage: Storage, steps: list[Step], info: ObjectInfo, sync: str | None,
                   stop: StopToken | None = None, redact: Callable[[str], str] | None = None) -> Outcome:
    """Run one object through the steps; transient failures are retried with backoff."""
    redact = redact or storage.redact
    started = time.monotonic()
    delay = BACKOFF
    attempt = 0
    restarts = 0
    while True:
        source = Source(storage, info)
        record: dict[str, Any] = {
            "connector": storage.name, "sync": sync, "key": info.key, "version": info.version,
            "size": info.size, "modified": _iso(info.modified), "text": None, "metadata": {},
        }
        try:
            run_steps(steps, record, source)
            if source.read_version not in (None, info.version) and restarts < 2:
                # overwritten since the listing: what was read is newer than what was listed,
                # so process it again as that version, so that the record and the state agree
                log.info("%s: changed since it was listed; processing the new version", info.key)
                info = ObjectInfo(info.key, source.read_version, info.size, info.modified)
                restarts += 1
                continue
            log.debug("%s: done in %.3fs", info.key, time.monotonic() - started)
            return Outcome(info.key, info.version, info.size, info.modified, "done")
        except ObjectSkipped as exc:
            return Outcome(info.key, info.version, info.size, info.modified, "done", f"skipped: {exc}")
        except ObjectGone:
            return Outcome(info.key, info.version, info.size, info.modified, "gone")
        except Exception as exc:  # noqa: BLE001 - one bad object never stops the others
            error = _as_error(exc, storage, info.key)
            if isinstance(error, ObjectGone):
                return Outcome(info.key, info.version, info.size, info.modified, "gone")
            if not isinstance(exc, FlexingestError):
                log.debug("object %s failed", info.key, exc_info=True)
            retry = error.transient and not getattr(error, "clients_retried", False)
            if retry and attempt < TRANSIENT_RETRIES and not (stop and stop.is_set()):
                attempt += 1
                log.info("%s: %s (transient; attempt %d of %d in %.1fs)", info.key, error, attempt + 1,
                         TRANSIENT_RETRIES + 1, delay)
                time.sleep(delay * (0.5 + random.random()))
                delay *= 2
                continue
            return Outcome(info.key, info.version, info.size, info.modified, "failed", redact(str(error)),
                           transient=error.transient)


def _as_error(exc: Exception, storage: Storage, key: str) -> FlexingestError:
    """A step's exception as a flexingest error: backend and OS errors translated, bugs named."""
    if isinstance(exc, FlexingestError):
        return exc
    if isinstance(exc, (TypeError, AttributeError, KeyError, ValueError, AssertionError, NameError)):
        log.debug("object %s: unexpected %s", key, type(exc).__name__, exc_info=True)
        return StepError(f"{type(exc).__name__}: {exc}")
    return _translate(exc, storage.describe(key), ObjectGone, storage.redact)


class BreakerTripped(FlexingestError):
    """Objects kept failing with transient errors: the storage (or a destination) is down."""


class _Committer:
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
                     if o.status == "done" else o for o in batch]
        result = self.state.record(self.sync, batch, self.max_attempts)
        for o in batch:
            status = "skipped" if o.status == "done" and (o.error or "").startswith("skipped:") else o.status
            self.counts[status] = self.counts.get(status, 0) + 1
            if status == "skipped":
                self.counts["done"] = self.counts.get("done", 0) + 1
        self.counts["dead"] = self.counts.get("dead", 0) + result["dead"]
        self.counts["failed"] = self.counts.get("failed", 0) - result["dead"]
        if self.keep is not None:
            self.keep.extend(batch)
        for o in batch:
            if o.status == "failed":
                log.warning("%s: %s failed: %s", self.sync, o.key, o.error)


def _process_planned(storage: Storage, steps: list[Step], state: State, sync_name: str, record_as: str | None,
                     concurrency: int, max_attempts: int, total: int, counts: dict[str, int],
                     stop: StopToken | None, on_progress: ProgressCallback | None,
                     redact: Callable[[str], str], keep: list[Outcome] | None = None) -> bool:
    """Process the state's planned keys; returns False if stopped before the end."""
    committer = _Committer(state, sync_name, steps, max_attempts, counts, keep)
    executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"flexingest-{sync_name}")
    in_flight: dict[Future[Outcome], ObjectInfo] = {}
    finished_queue: queue.SimpleQueue[Future[Outcome]] = queue.SimpleQueue()  # O(1) per object
    finished = 0
    finished_bytes = 0
    complete = True
    in_a_row = 0  # transient failures in a row: the circuit breaker

    def collect(timeout: float) -> None:
        nonlocal finished, finished_bytes, in_a_row
        if not in_flight:
            return
        done: list[Future[Outcome]] = []
        try:
            done.append(finished_queue.get(timeout=timeout) if timeout > 0 else finished_queue.get_nowait())
            while True:
                done.append(finished_queue.get_nowait())
        except queue.Empty:
            pass
        for future in done:
            info = in_flight.pop(future)
            outcome = future.result()
            committer.add(outcome)
            in_a_row = in_a_row + 1 if outcome.status == "failed" and outcome.transient else 0
            if in_a_row >= BREAKER and not tripped:
                tripped.append(outcome.error or "")
                log.error("%s: %d objects in a row failed with transient errors (%s); stopping this pass, "
                          "the rest is left for the next one", sync_name, in_a_row, outcome.error)
            finished += 1
            finished_bytes += info.size or 0
            if on_progress:
                on_progress(finished, total, finished_bytes)
        if not done:
            committer.commit()

    tripped: list[str] = []
    try:
        for batch in state.planned():
            for row in batch:
                if (stop is not None and stop.is_set()) or tripped:
                    complete = False
                    break
                while len(in_flight) >= concurrency * 2:
                    collect(COMMIT_EVERY)
                info = ObjectInfo(row["key"], row["version"], row["size"], row["modified"])
                future = executor.submit(process_object, storage, steps, info, record_as, stop, redact)
                in_flight[future] = info
                future.add_done_callback(finished_queue.put)
            if not complete:
                break
            collect(0)
        while in_flight and tripped:
            collect(COMMIT_EVERY)
        while in_flight:
            if stop is not None and stop.is_set():
                complete = False
                remaining = stop.remaining()
                if remaining is not None and remaining <= 0:
                    log.warning("%s: grace time over; %d object(s) still in flight are left for the next pass",
                                sync_name, len(in_flight))
                    break
                collect(min(COMMIT_EVERY, remaining if remaining is not None else COMMIT_EVERY))
            else:
                collect(COMMIT_EVERY)
    except BaseException:
        executor.shutdown(wait=False, cancel_futures=True)
        try:
            committer.commit()  # keep what finished, if the state can still take it
        except FlexingestError as exc:
            log.error("%s: %s", sync_name, exc)
        raise
    committer.commit()
    executor.shutdown(wait=not in_flight, cancel_futures=True)
    if tripped:
        raise BreakerTripped(f"stopped after {BREAKER} objects in a row failed transiently; last: {tripped[0]}")
    return complete


def run_pass(pipeline: Pipeline, sync: Sync, state: State, *, stop: StopToken | None = None,
             dry_run: bool = False, on_progress: ProgressCallback | None = None,
             on_explain: Callable[[str, str, str | None], None] | None = None) -> PassResult:
    """One pass of ``sync``: see the module docstring."""
    started = time.monotonic()
    result = PassResult(sync.name)
    counts = result.counts
    steps: list[Step] = []
    listing_complete = False
    state_failed = False
    run_id = None
    started_at = now_iso()
    try:
        storage = open_connector(pipeline.connector(sync.connector), pipeline.base_dir)
        if not dry_run:
            steps = build_steps(pipeline, sync)
        listing_complete = _list(storage, sync, state, stop)
        if not dry_run:  # the first write: after the state's integrity check, run beside the listing
            run_id = state.start_run(sync.name, "pass", started_at)
        plan = state.plan(sync.name, ignore_changes=sync.on_change == "ignore", everything=dry_run)
        counts.update({k: plan.counts.get(k, 0) for k in ("new", "changed", "retry")})
        counts["listed"] = plan.listed
        counts["unchanged"] = plan.counts.get("done", 0) + plan.counts.get("ignored", 0)
        counts["filtered"] = plan.counts.get("filtered", 0)
        counts["skipped_dead"] = plan.counts.get("dead", 0)
        if not listing_complete and stop is not None and stop.is_set():
            result.interrupted = True
        if dry_run:
            if on_explain:
                for reason, key, skip in state.explain():
                    on_explain(reason, key, skip)
            return result
        state.unmark_gone(sync.name)  # listed again: back (before objects gone meanwhile are marked)
        if plan.to_process and not result.interrupted:
            log.info("%s: %d to process (%d new, %d changed, %d to retry) of %d listed", sync.name,
                     plan.to_process, counts["new"], counts["changed"], counts["retry"], counts["listed"])
            complete = _process_planned(storage, steps, state, sync.name, sync.name, sync.concurrency,
                                        sync.max_attempts, plan.to_process, counts, stop, on_progress,
                                        redactor(pipeline))
            result.interrupted = result.interrupted or not complete
        if listing_complete:
            counts["gone"] = counts.get("gone", 0) + state.mark_gone(sync.name)
    except StateError:
        state_failed = True  # the state file itself: not this sync's failure, the whole run's
        raise
    except FlexingestError as exc:
        result.error = redactor(pipeline)(str(exc))
    except Exception as exc:
        result.error = redactor(pipeline)(f"unexpected {type(exc).__name__}: {exc}")  # recorded, then raised
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
                 on_progress: ProgressCallback | None = None) -> PassResult:
    """``flexingest process``: exactly these keys, now, whatever the state says.

    With a sync, outcomes are recorded under it (a later pass will not redo them).
    """
    started = time.monotonic()
    name = sync.name if sync is not None else "process"
    result = PassResult(name)
    counts = result.counts
    steps: list[Step] = []
    try:
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
                    counts[status] = counts.get(status, 0) + 1
                    result.outcomes.append(Outcome(key, "", None, None, status, str(error)))
        state.begin_listing()
        state.add_keys((i.key, i.version, i.size, i.modified) for i in infos)
        plan = state.plan(name, force=True)
        counts["listed"] = len(infos)
        counts["new"] = plan.to_process
        complete = _process_planned(storage, steps, state, name, sync.name if sync else None, concurrency,
                                    sync.max_attempts if sync else 3, plan.to_process, counts, stop, on_progress,
                                    redactor(pipeline), keep=result.outcomes)
        result.interrupted = not complete
    except StateError:
        raise
    except FlexingestError as exc:
        result.error = redactor(pipeline)(str(exc))
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
