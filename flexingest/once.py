"""``flexingest run --once`` (one pass of each sync, for cron and CI) and ``--dry-run``.

A sync with events first drains its queue; its listing (the reconciliation) then runs if it
never ran or its schedule says it is due. The caller holds the state lock.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from .exceptions import FlexingestError, StateError
from .runner import next_due
from .state import State
from .sync import PassResult, ProgressCallback, StopToken, run_pass

if TYPE_CHECKING:
    from .config import Pipeline, Sync
    from .executors import Executor

log = logging.getLogger(__name__)


def run_once(pipeline: Pipeline, syncs: list[Sync], state: State, *, stop: StopToken, executor: Executor | None,
             on_result: Callable[[PassResult], None],
             progress: Callable[[str], ProgressCallback | None] = lambda name: None) -> bool:
    """One pass of each sync (``run --once``); False if an object or a pass failed.

    A sync with events first drains its queue; its listing (the reconciliation) then runs
    if it never ran or its schedule says it is due.
    """
    ok = True
    for sync in syncs:
        if stop.is_set():
            break
        if sync.events is not None:
            result = drain_events(pipeline, sync, state, stop=stop, executor=executor)
            if result is not None:
                on_result(result)
                ok = ok and result.ok
            if not listing_due(state, sync):
                continue
        bar = progress(sync.name)
        try:
            result = run_pass(pipeline, sync, state, stop=stop, on_progress=bar, executor=executor)
        finally:
            close = getattr(bar, "close", None)
            if close is not None:
                close()
        on_result(result)
        ok = ok and result.ok
    return ok


def drain_events(pipeline: Pipeline, sync: Sync, state: State, *, stop: StopToken,
                 executor: Executor | None) -> PassResult | None:
    """What the sync's queue holds now, processed and acknowledged; None if it held nothing."""
    from .events import open_event_source
    from .sync import process_events

    try:
        with open_event_source(pipeline, sync) as source:
            messages = source.drain(max_wait=60.0)
            if not messages:
                log.info("%s: events: the queue is empty", sync.name)
                state.note_events(sync.name, 0, 0, None, None)
                return None
            with source.keep_alive(messages):
                return process_events(pipeline, sync, state, messages, stop=stop, executor=executor)
    except StateError:
        raise
    except FlexingestError as exc:
        result = PassResult(sync.name, kind="events")
        result.error = str(exc)
        return result


def listing_due(state: State, sync: Sync) -> bool:
    """A sync with events lists (reconciles) only when its schedule says so, or never did."""
    last = state.status().get(sync.name, {}).get("last_run")
    if last is None:
        return True  # the backfill
    due = next_due(sync, last["started_at"])
    if due is not None and due > datetime.now(timezone.utc):
        log.info("%s: the reconciliation listing is due at %s; events only this time", sync.name,
                 due.isoformat(timespec="seconds"))
        return False
    return True


def dry_run(pipeline: Pipeline, syncs: list[Sync], explain: Callable[[str, str, str, str | None], None]) -> bool:
    """``run --once --dry-run``: what each pass would do, key by key, changing nothing (the state
    file, if there is one, is only read)."""
    if not pipeline.state_path.exists():
        with State(":memory:") as state:
            return _dry_run(pipeline, syncs, state, explain)
    with State(pipeline.state_path, create=False) as state:
        state.verify()
        return _dry_run(pipeline, syncs, state, explain)


def _dry_run(pipeline: Pipeline, syncs: list[Sync], state: State,
             explain: Callable[[str, str, str, str | None], None]) -> bool:
    ok = True
    for sync in syncs:
        def said(reason: str, key: str, skip: str | None, _name: str = sync.name) -> None:
            explain(_name, reason, key, skip)

        result = run_pass(pipeline, sync, state, dry_run=True, on_explain=said)
        c = result.counts
        log.info("%s: dry run: would process %d (new %d, changed %d, retry %d); unchanged %d, filtered %d, dead %d",
                 sync.name, c.get("new", 0) + c.get("changed", 0) + c.get("retry", 0), c.get("new", 0),
                 c.get("changed", 0), c.get("retry", 0), c.get("unchanged", 0), c.get("filtered", 0),
                 c.get("skipped_dead", 0))
        if result.error:
            log.error("%s: %s", sync.name, result.error)
            ok = False
    return ok
