"""``flexingest run``: every sync on its schedule, with APScheduler 3.x used directly.

One job per sync, a first pass at start, never two passes of one sync at once
(``max_instances=1``), missed runs coalesced into one and run however late. The caller
holds the state lock for the service's lifetime and owns signal handling: when the
:class:`~flexingest.sync.StopToken` is set, passes stop taking objects, in-flight ones
get the grace time, and :func:`serve` returns.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from . import metrics
from .connectors import Storage, open_connector
from .exceptions import ConfigError, ConfigIssue, FlexingestError, StateError
from .state import State
from .sync import PassResult, ProgressCallback, StopToken, run_pass

if TYPE_CHECKING:
    from .config import Cron, Every, Pipeline, Sync
    from .executors import Executor

log = logging.getLogger(__name__)

EVENTS_RETRY = 60  # seconds before a failing queue is tried again


def trigger_for(schedule: Every | Cron) -> Any:
    """The APScheduler trigger of a ``schedule:`` mapping."""
    from zoneinfo import ZoneInfo

    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    every = getattr(schedule, "every", None)
    if every is not None:
        return IntervalTrigger(seconds=max(every.total_seconds(), 0.001), timezone=timezone.utc)
    return CronTrigger.from_crontab(schedule.cron, timezone=ZoneInfo(schedule.timezone))  # type: ignore[union-attr]


def next_due(sync: Sync, last_started: str | None, now: datetime | None = None) -> datetime | None:
    """When the service would next run this sync, given its last pass start (for ``status``)."""
    now = now or datetime.now(timezone.utc)
    every = getattr(sync.schedule, "every", None)
    if every is not None:
        if last_started is None:
            return now
        due: datetime = datetime.fromisoformat(last_started.replace("Z", "+00:00")) + every
        return due
    fire: datetime | None = trigger_for(sync.schedule).get_next_fire_time(None, now)
    return fire


class _Running:
    """Counts passes in flight so that a stop can wait for them, bounded."""

    def __init__(self) -> None:
        self.count = 0
        self.cond = threading.Condition()

    def __enter__(self) -> None:
        with self.cond:
            self.count += 1

    def __exit__(self, *exc: object) -> None:
        with self.cond:
            self.count -= 1
            self.cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.count == 0, timeout)


class Storages:
    """One opened connector per connector for the service's life: filesystems, their sessions and
    credentials are made once, not once per pass (fsspec caches instances by their arguments,
    and credentials rebuilt each pass would grow that cache without end)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._opened: dict[str, Storage] = {}
        self._lock = threading.Lock()

    def get(self, ref: str | int) -> Storage:
        connector = self.pipeline.connector(ref)
        with self._lock:
            if connector.name not in self._opened:
                self._opened[connector.name] = open_connector(connector, self.pipeline.base_dir)
            return self._opened[connector.name]

    def reopened(self, pipeline: Pipeline) -> Storages:
        """The storages of a reloaded ``pipeline``: connectors it declares unchanged stay open."""
        fresh = Storages(pipeline)
        with self._lock:
            for name, storage in self._opened.items():
                try:
                    same = pipeline.connector(name) == self.pipeline.connector(name)
                except FlexingestError:
                    continue  # removed
                if same and pipeline.base_dir == self.pipeline.base_dir:
                    fresh._opened[name] = storage
        return fresh


class Service:
    """Every sync of a pipeline on its schedule, until ``stop`` is requested.

    One :class:`Storages` for the service's life; :meth:`run_pass` is what each scheduled
    run does, :meth:`run_now` what an operator's "run now" does. :meth:`reload` (SIGHUP, a
    connector created over HTTP) loads the pipeline file again: passes in flight finish with the
    pipeline they started with, the next ones use the new one.
    """

    def __init__(self, pipeline: Pipeline, syncs: list[Sync], stop: StopToken,
                 on_result: Callable[[PassResult], None] = lambda result: None,
                 progress: Callable[[str], ProgressCallback | None] = lambda name: None,
                 executor: Executor | None = None,
                 on_reload: Callable[[Pipeline], None] = lambda pipeline: None) -> None:
        self.pipeline, self.syncs, self.stop = pipeline, syncs, stop
        self.executor = executor  # one pool or cluster connection for the service's life
        self.on_result, self.progress, self.on_reload = on_result, progress, on_reload
        self.storages = Storages(pipeline)
        self.failures: list[str] = []
        self._running = _Running()
        # a sync's listing pass and its events never run at once: they diff the same objects
        self._sync_locks = {s.name: threading.Lock() for s in syncs}
        self._listed = {s.name: threading.Event() for s in syncs}  # its first pass (the backfill) ended
        self._overrun_said: set[str] = set()  # syncs whose running pass already had its "still running" line
        #: the syncs chosen with --sync (None: all of the file, also after a reload)
        self._only = None if len(syncs) == len(pipeline.syncs) else {s.name for s in syncs}
        self._lock = threading.RLock()  # pipeline, syncs, jobs of the scheduler, passes in flight
        self._active: set[str] = set()
        self._scheduler: Any = None
        self._reload = threading.Event()

    def run_pass(self, sync: Sync) -> PassResult | None:
        """One pass of ``sync`` with the service's opened connector; None if the service is stopping."""
        if self.stop.is_set():
            return None
        self._overrun_said.discard(sync.name)
        with self._running, self._sync_locks.setdefault(sync.name, threading.Lock()):
            with self._lock:
                pipeline = self.pipeline
                self._active.add(sync.name)
            try:
                with State(pipeline.state_path, check=False) as state:  # checked once, at start
                    result = run_pass(pipeline, sync, state, stop=self.stop,
                                      on_progress=self.progress(sync.name),
                                      storage=self.storages.get(sync.connector), executor=self.executor)
                metrics.observe_pass(result)
                self.on_result(result)
                return result
            except StateError as exc:  # the state file cannot take more: stop the service, loudly
                log.error("%s; stopping the service", exc)
                self.failures.append(str(exc))
                self.stop.request()
            except Exception:  # noqa: BLE001 - the service outlives one bad pass
                log.exception("%s: the pass failed unexpectedly; the next one runs on schedule", sync.name)
            finally:
                self._listed.setdefault(sync.name, threading.Event()).set()
                with self._lock:
                    self._active.discard(sync.name)
        return None

    def running(self) -> set[str]:
        """The syncs whose pass is in flight now."""
        with self._lock:
            return set(self._active)

    def run_now(self, name: str) -> str:
        """A pass of sync ``name`` now, through the scheduler: ``"started"``, or ``"joined"`` when
        one is already running (never two at once). Raises FlexingestError for an unknown sync."""
        with self._lock:
            if not any(s.name == name for s in self.syncs):
                known = ", ".join(s.name for s in self.syncs) or "none"
                raise FlexingestError(f"unknown sync {name!r} (known: {known})")
            if name in self._active:
                return "joined"
            if self._scheduler is None or not self._scheduler.running or self.stop.is_set():
                raise FlexingestError("the service is not running passes (starting or stopping)")
            self._scheduler.modify_job(name, next_run_time=datetime.now(timezone.utc))
            return "started"

    def ready(self) -> str | None:
        """None when the service runs its passes; else why not."""
        if self.failures:
            return f"the state file failed: {self.failures[-1]}"
        if self.stop.is_set():
            return "stopping"
        if self._scheduler is None or not self._scheduler.running:
            return "starting: the scheduler is not running yet"
        return None

    def request_reload(self) -> None:
        """Load the pipeline file again at the next tick of :meth:`serve` (safe in a signal handler)."""
        self._reload.set()

    def reload(self) -> list[ConfigIssue]:
        """Load the pipeline file again and use it; an invalid file is refused (its problems logged and
        returned) and the running pipeline kept."""
        from .loader import load_pipeline

        path = self.pipeline.path
        try:
            pipeline: Pipeline = load_pipeline(path)
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("%s", issue)
            log.error("reload of %s refused: %d error(s); the running pipeline is kept", path, len(exc.issues))
            return list(exc.issues)
        if pipeline.state_path != self.pipeline.state_path:
            issue = ConfigIssue(str(path), 0, 0, "state", f"the state file changed ({self.pipeline.state_path} -> "
                                f"{pipeline.state_path}): restart the service to use another state file")
            log.error("reload of %s refused: %s; the running pipeline is kept", path, issue)
            return [issue]
        self.apply(pipeline)
        return []

    def apply(self, pipeline: Pipeline) -> None:
        """Use ``pipeline`` (a valid reload of the same file): syncs added, removed, rescheduled."""
        with self._lock:
            old = {s.name: s for s in self.syncs}
            syncs = [s for s in pipeline.syncs if self._only is None or s.name in self._only]
            self.pipeline, self.syncs = pipeline, syncs
            self.storages = self.storages.reopened(pipeline)
            self.on_reload(pipeline)
            scheduler = self._scheduler
            if scheduler is not None:
                for sync in syncs:
                    if sync.name not in old:
                        self._schedule(scheduler, sync, datetime.now(timezone.utc))
                        continue
                    if sync.schedule != old[sync.name].schedule:
                        scheduler.reschedule_job(sync.name, trigger=trigger_for(sync.schedule))
                    scheduler.modify_job(sync.name, args=[sync])
                for name in old:
                    if name not in {s.name for s in syncs}:
                        scheduler.remove_job(name)
        names = {s.name for s in syncs}
        metrics.forget(lambda name: name in names)
        added = [n for n in names if n not in old]
        removed = [n for n in old if n not in names]
        with_events = sorted([s.name for s in syncs if s.name in added and s.events is not None]
                             + [n for n in removed if old[n].events is not None])
        if with_events:
            log.warning("%s: the bucket events of a sync added or removed by a reload start or stop at the next "
                        "restart of the service (its scheduled passes follow the reload now)", ", ".join(with_events))
        log.info("pipeline %s reloaded: %d sync(s)%s%s", pipeline.path, len(syncs),
                 f"; added: {', '.join(sorted(added))}" if added else "",
                 f"; removed: {', '.join(sorted(removed))}" if removed else "")

    def _schedule(self, scheduler: Any, sync: Sync, first: datetime) -> None:
        scheduler.add_job(self.run_pass, trigger_for(sync.schedule), args=[sync], id=sync.name, name=sync.name,
                          next_run_time=first)

    def consume_events(self, sync: Sync) -> None:
        """The events of ``sync``, as they arrive, until the stop (a thread per sync with events).

        Starts after the sync's first pass (the backfill listing). A queue that fails (missing,
        denied, unreachable for long) is said once and tried again a minute later.
        """
        from .events import open_event_source
        from .sync import process_events

        while not self._listed[sync.name].wait(1.0):
            if self.stop.is_set():
                return
        while not self.stop.is_set():
            source = None
            try:
                source = open_event_source(self.pipeline, sync)
                log.info("%s: consuming %s", sync.name, source.describe())
                for batch in source.batches(self.stop.event):
                    with source.keep_alive(batch), self._running, self._sync_locks[sync.name]:
                        with State(self.pipeline.state_path, check=False) as state:
                            result = process_events(self.pipeline, sync, state, batch,
                                                    storage=self.storages.get(sync.connector), stop=self.stop,
                                                    executor=self.executor)
                    if result.counts.get("listed") or result.counts.get("gone") or result.error:
                        self.on_result(result)
            except StateError as exc:
                log.error("%s; stopping the service", exc)
                self.failures.append(str(exc))
                self.stop.request()
            except FlexingestError as exc:
                log.error("%s: events: %s; trying again in %ds", sync.name, exc, EVENTS_RETRY)
                self.stop.wait(EVENTS_RETRY)
            except Exception:  # noqa: BLE001 - the service outlives a bad batch
                log.exception("%s: events failed unexpectedly; trying again in %ds", sync.name, EVENTS_RETRY)
                self.stop.wait(EVENTS_RETRY)
            finally:
                if source is not None:
                    source.close()

    def _still_running(self, event: Any) -> None:
        if event.job_id in self._overrun_said:
            return  # one line per overrunning pass, not one per run time it covers
        self._overrun_said.add(event.job_id)
        log.info("%s: the previous pass is still running; scheduled passes are skipped until it ends "
                 "(a pass takes longer than the schedule)", event.job_id)

    def serve(self) -> bool:
        """Run until ``stop``; False if the service stopped because the state file failed."""
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        # one thread per sync at most (max_instances=1), room for syncs a reload adds
        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=max(32, 2 * len(self.syncs)))},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=timezone.utc,
        )
        scheduler.add_listener(self._still_running, EVENT_JOB_MAX_INSTANCES)
        logging.getLogger("apscheduler.scheduler").addFilter(_said_by_us)
        start = datetime.now(timezone.utc)
        with self._lock:
            for sync in self.syncs:
                self._schedule(scheduler, sync, start)
            scheduler.start()
            self._scheduler = scheduler
        for sync in self.syncs:
            if sync.events is not None:
                threading.Thread(target=self.consume_events, args=[sync], name=f"flexingest-events-{sync.name}",
                                 daemon=True).start()
        log.info("running %d sync(s): %s%s", len(self.syncs), ", ".join(
            f"{s.name} ({_describe(s)})" for s in self.syncs),
            f"; steps on {self.executor.describe()}" if self.executor is not None else "")
        try:
            while not self.stop.wait(0.5):
                if self._reload.is_set():
                    self._reload.clear()
                    try:
                        self.reload()
                    except Exception:  # noqa: BLE001 - a reload never stops the service
                        log.exception("the reload failed unexpectedly; the running pipeline is kept")
        finally:
            scheduler.shutdown(wait=False)
            grace = self.stop.remaining()
            started_wait = time.monotonic()
            # passes stop taking objects at once and give in-flight ones the grace time;
            # a pass blocked in a slow request gets a few seconds more, then is left behind
            if not self._running.wait_idle((grace if grace is not None else 0) + 5):
                log.warning("a pass is still busy %.0fs after the stop; leaving it (nothing it did not commit is "
                            "lost)", time.monotonic() - started_wait)
        return not self.failures


def serve(pipeline: Pipeline, syncs: list[Sync], stop: StopToken,
          on_result: Callable[[PassResult], None],
          progress: Callable[[str], ProgressCallback | None] = lambda name: None,
          executor: Executor | None = None) -> bool:
    """Run ``syncs`` on their schedules until ``stop`` is requested (see :class:`Service`)."""
    return Service(pipeline, syncs, stop, on_result, progress, executor).serve()


def _said_by_us(record: logging.LogRecord) -> bool:
    """APScheduler warns when a pass is still running at its next run time; ``serve`` says it in its own words."""
    return "maximum number of running instances" not in str(record.msg)


def _describe(sync: Sync) -> str:
    every = getattr(sync.schedule, "every", None)
    if every is not None:
        return f"every {every.total_seconds():g}s"
    return f"cron '{sync.schedule.cron}' {sync.schedule.timezone}"  # type: ignore[union-attr]


def run_service(pipeline: Pipeline, syncs: list[Sync], stop: StopToken, on_result: Callable[[PassResult], None], *,
                progress: Callable[[str], ProgressCallback | None], executor: Executor | None, http: Any,
                on_reload: Callable[[Pipeline], None]) -> bool:
    """The service until a stop, with its HTTP interface if ``http`` (settings) is given; SIGHUP
    loads the pipeline file again. False if it stopped because the state file failed."""
    import signal

    service = Service(pipeline, syncs, stop, on_result, progress=progress, executor=executor, on_reload=on_reload)
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: service.request_reload())
    interface = None
    try:
        if http is not None:
            from .http import start

            interface = start(service, http)
        return service.serve()
    finally:
        signal.signal(signal.SIGHUP, previous)
        if interface is not None:
            interface.stop(max(2.0, stop.remaining() or 0.0))


def _exit_now(signum: int) -> None:
    import os

    from . import children

    children.end(wait=0.5)  # no program started by a step outlives flexingest
    logging.shutdown()
    os._exit(128 + signum)


def on_stop_signals(stop: StopToken, at_once: Callable[[int], None] = _exit_now) -> Callable[[], None]:
    """SIGTERM/SIGINT request the stop; a second one calls ``at_once(signum)``: by default, end
    the programs of steps and exit 128 + signum at once (the state stays consistent: each commit
    is one transaction). Returns what puts the previous handlers back."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("second %s: stopping now", name)
            at_once(signum)
            return
        log.warning("%s: finishing objects in flight (up to %gs; send again to stop now)", name, stop.grace)
        stop.request()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
