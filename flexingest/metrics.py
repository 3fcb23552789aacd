"""What the service measures, for ``GET /metrics`` (Prometheus).

The pass calls the plain ``observe_*`` functions below at a few places; they do nothing
until :func:`enable` is given a ``prometheus_client.CollectorRegistry`` (the HTTP
interface does it), so that the pass knows nothing of Prometheus and a ``run`` without
``--http`` never imports it. Object counts by status are not observed here: the HTTP layer
reads them from the state at each scrape.

Names and labels (``sync``, ``step``, ``status``, ``result``) are listed in the README.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterable, Iterator

from .exceptions import ObjectSkipped

if TYPE_CHECKING:
    from .state import Outcome
    from .sync import PassResult, ProgressCallback

SECONDS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class _Metrics:
    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def made(kind: Any, name: str, doc: str, labels: tuple[str, ...], **kw: Any) -> Any:
            return kind(name, doc, labels, registry=registry, **kw)

        self.processed = made(Counter, "flexingest_objects_processed", "Objects finished, by outcome",
                              ("sync", "status"))
        self.failed = made(Counter, "flexingest_objects_failed", "Objects that failed (an attempt each)", ("sync",))
        self.backlog = made(Gauge, "flexingest_backlog", "Objects the current pass planned and has not finished",
                            ("sync",))
        self.pass_seconds = made(Histogram, "flexingest_pass_duration_seconds", "How long passes take", ("sync",),
                                 buckets=SECONDS)
        self.passes = made(Counter, "flexingest_passes", "Passes, by result (ok, failed, error, interrupted)",
                           ("sync", "result"))
        self.last_pass = made(Gauge, "flexingest_last_pass_timestamp_seconds", "When the last pass ended",
                              ("sync",))
        self.last_ok = made(Gauge, "flexingest_last_pass_success", "1 if the last pass was ok, else 0", ("sync",))
        self.listing_seconds = made(Histogram, "flexingest_listing_duration_seconds", "How long listings take",
                                    ("sync",), buckets=SECONDS)
        self.listed = made(Gauge, "flexingest_listed_objects", "Objects the last listing found", ("sync",))
        self.step_seconds = made(Histogram, "flexingest_step_duration_seconds", "How long a step takes for one object",
                                 ("sync", "step"), buckets=SECONDS)
        self.step_failures = made(Counter, "flexingest_step_failures", "Objects a step failed on", ("sync", "step"))
        self.breaker = made(Counter, "flexingest_breaker_trips", "Passes stopped by the circuit breaker (an outage)",
                            ("sync",))
        self.remaining: dict[str, int] = {}
        self.lock = threading.Lock()


_metrics: _Metrics | None = None


def enable(registry: Any) -> None:
    """Start measuring into ``registry`` (a ``prometheus_client.CollectorRegistry``)."""
    global _metrics
    _metrics = _Metrics(registry)


def disable() -> None:
    global _metrics
    _metrics = None


def observe_listing(sync: str, seconds: float, listed: int, planned: int) -> None:
    """A listing ended: how long it took, what it found, how many objects the pass will process."""
    m = _metrics
    if m is None:
        return
    m.listing_seconds.labels(sync).observe(seconds)
    m.listed.labels(sync).set(listed)
    with m.lock:
        m.remaining[sync] = planned
    m.backlog.labels(sync).set(planned)


def progress(sync: str, then: ProgressCallback | None) -> ProgressCallback | None:
    """The pass's progress callback, also keeping the backlog of ``sync``."""
    m = _metrics
    if m is None:
        return then

    def on_progress(done: int, total: int, nbytes: int) -> None:
        with m.lock:
            m.remaining[sync] = max(0, total - done)
        m.backlog.labels(sync).set(max(0, total - done))
        if then is not None:
            then(done, total, nbytes)

    return on_progress


def observe_outcomes(sync: str, outcomes: Iterable[Outcome]) -> None:
    m = _metrics
    if m is None:
        return
    for o in outcomes:
        m.processed.labels(sync, o.status).inc()
        if o.status == "failed":
            m.failed.labels(sync).inc()


@contextlib.contextmanager
def _timed(m: _Metrics, step: str, sync: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    except ObjectSkipped:
        raise
    except Exception:
        m.step_failures.labels(sync, step).inc()
        raise
    finally:
        m.step_seconds.labels(sync, step).observe(time.monotonic() - started)


def timed_step(step: str, sync: str | None) -> ContextManager[None]:
    """Around one step's ``process`` of one object: its duration, and a failure if it raises."""
    m = _metrics
    return contextlib.nullcontext() if m is None else _timed(m, step, sync or "")


def observe_breaker(sync: str) -> None:
    m = _metrics
    if m is not None:
        m.breaker.labels(sync).inc()


def observe_pass(result: PassResult) -> None:
    m = _metrics
    if m is None:
        return
    outcome = "error" if result.error else "failed" if not result.ok else (
        "interrupted" if result.interrupted else "ok")
    m.pass_seconds.labels(result.sync).observe(result.seconds)
    m.passes.labels(result.sync, outcome).inc()
    m.last_pass.labels(result.sync).set(time.time())
    m.last_ok.labels(result.sync).set(1 if outcome == "ok" else 0)


def backlog(sync: str) -> int:
    """Objects the current pass of ``sync`` planned and has not finished (0 when not measured)."""
    m = _metrics
    if m is None:
        return 0
    with m.lock:
        return m.remaining.get(sync, 0)


def forget(keep: Callable[[str], bool]) -> None:
    """Drop the backlog of syncs no longer in the pipeline (after a reload)."""
    m = _metrics
    if m is None:
        return
    with m.lock:
        for name in [n for n in m.remaining if not keep(n)]:
            del m.remaining[name]
            try:
                m.backlog.remove(name)
            except KeyError:
                pass
