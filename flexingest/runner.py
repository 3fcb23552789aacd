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

from .connectors import Storage, open_connector
from .exceptions import StateError
from .state import State
from .sync import PassResult, ProgressCallback, StopToken, run_pass

if TYPE_CHECKING:
    from .config import Cron, Every, Pipeline, Sync

log = logging.getLogger(__name__)


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


def serve(pipeline: Pipeline, syncs: list[Sync], stop: StopToken,
          on_result: Callable[[PassResult], None],
          progress: Callable[[str], ProgressCallback | None] = lambda name: None) -> bool:
    """Run ``syncs`` on their schedules until ``stop`` is requested.

    Returns False if the service stopped because the state file failed.
    """
    from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    running = _Running()
    failures: list[str] = []
    storages = Storages(pipeline)
    overrun_said: set[str] = set()  # syncs whose running pass already had its "still running" line

    def job(sync: Sync) -> None:
        if stop.is_set():
            return
        overrun_said.discard(sync.name)
        with running:
            try:
                with State(pipeline.state_path, check=False) as state:  # checked once, at start
                    result = run_pass(pipeline, sync, state, stop=stop, on_progress=progress(sync.name),
                                      storage=storages.get(sync.connector))
                on_result(result)
            except StateError as exc:  # the state file cannot take more: stop the service, loudly
                log.error("%s; stopping the service", exc)
                failures.append(str(exc))
                stop.request()
            except Exception:  # noqa: BLE001 - the service outlives one bad pass
                log.exception("%s: the pass failed unexpectedly; the next one runs on schedule", sync.name)

    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=max(1, len(syncs)))},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone=timezone.utc,
    )
    def still_running(event: JobSubmissionEvent) -> None:
        if event.job_id in overrun_said:
            return  # one line per overrunning pass, not one per run time it covers
        overrun_said.add(event.job_id)
        log.info("%s: the previous pass is still running; scheduled passes are skipped until it ends "
                 "(a pass takes longer than the schedule)", event.job_id)

    scheduler.add_listener(still_running, EVENT_JOB_MAX_INSTANCES)
    logging.getLogger("apscheduler.scheduler").addFilter(_said_by_us)
    start = datetime.now(timezone.utc)
    for sync in syncs:
        scheduler.add_job(job, trigger_for(sync.schedule), args=[sync], id=sync.name, name=sync.name,
                          next_run_time=start)
    scheduler.start()
    log.info("running %d sync(s): %s", len(syncs), ", ".join(
        f"{s.name} ({_describe(s)})" for s in syncs))
    try:
        while not stop.wait(1.0):
            pass
    finally:
        scheduler.shutdown(wait=False)
        grace = stop.remaining()
        started_wait = time.monotonic()
        # passes stop taking objects at once and give in-flight ones the grace time;
        # a pass blocked in a slow request gets a few seconds more, then is left behind
        if not running.wait_idle((grace if grace is not None else 0) + 5):
            log.warning("a pass is still busy %.0fs after the stop; leaving it (nothing it did not commit is lost)",
                        time.monotonic() - started_wait)
    return not failures


def _said_by_us(record: logging.LogRecord) -> bool:
    """APScheduler warns when a pass is still running at its next run time; ``serve`` says it in its own words."""
    return "maximum number of running instances" not in str(record.msg)


def _describe(sync: Sync) -> str:
    every = getattr(sync.schedule, "every", None)
    if every is not None:
        return f"every {every.total_seconds():g}s"
    return f"cron '{sync.schedule.cron}' {sync.schedule.timezone}"  # type: ignore[union-attr]
