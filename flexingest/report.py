"""What ``flexingest status`` says, as data (``--json``, the HTTP API) and as text for people.

:func:`status_report` reads the state file only (read-only, no secret needed);
:func:`status_lines` turns a report into the table and the lines below it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Collection, Iterator

from .console import printable
from .lock import StateLock
from .records import STATUS_COUNTS
from .state import State

if TYPE_CHECKING:
    from .config import Pipeline

KILLED = "the process stopped before it recorded the end of this pass"


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z") if moment else None


def status_report(pipeline: Pipeline, *, problems: int | None = 20, state: State | None = None,
                  running: Collection[str] | None = None) -> dict[str, Any]:
    """Per sync: object counts, the last run, the next due time, the recent failures.

    ``problems``: how many failed and dead objects to list per sync (None: all). Opens the
    state file read-only unless ``state`` is given (the service's own connection).
    ``running``: the syncs whose pass is in flight, from the service that holds the lock (an
    unfinished run of any other sync was killed); by default the lock says whether one may run.
    """
    from .runner import next_due

    known = {s.name: s for s in pipeline.syncs}
    rows: dict[str, dict[str, Any]] = {}
    listed: dict[str, list[dict[str, Any]]] = {}
    events: dict[str, dict[str, Any]] = {}
    after: dict[str, dict[str, Any]] = {}
    if state is not None or pipeline.state_path.exists():
        own = state is None
        state = state or State(pipeline.state_path, readonly=True)
        try:
            if own:
                state.verify()
            rows = state.status()
            listed = {name: [dict(r) for r in state.problems(name, problems)] for name in rows}
            events = state.event_stats()
            after = state.after_status()
        finally:
            if own:
                state.close()
        held = running is None and StateLock(pipeline.state_path).is_held()
        for name, entry in rows.items():
            last = entry.get("last_run")
            alive = held or (running is not None and name in running)
            if last and last["ended_at"] is None and last["result"] is None and not alive:
                last["result"] = "killed"  # unfinished, and no process holds the lock: it died
                last["error"] = KILLED
    out: dict[str, Any] = {}
    now = datetime.now(timezone.utc)
    for name in [*known, *(n for n in rows if n not in known)]:
        entry = {**dict.fromkeys(STATUS_COUNTS, 0), "last_run": None, **rows.get(name, {})}
        sync = known.get(name)
        last = entry["last_run"]
        entry["next_due"] = _iso(next_due(sync, last["started_at"] if last else None, now) if sync else None)
        entry["problems"] = listed.get(name, [])
        if sync is not None and sync.after is not None or name in after:
            entry["after"] = {"action": sync.after.describe() if sync is not None and sync.after is not None else None,
                              "pending": 0, "failing": 0, "error": None, **after.get(name, {})}
        if sync is not None and sync.events is not None or name in events:
            entry["events"] = {"queue": sync.events.type if sync is not None and sync.events is not None else None,
                               **events.get(name, {})}
        if sync is None:
            entry["note"] = "no longer in the pipeline file"
        out[name] = entry
    return {"pipeline": str(pipeline.path), "state": str(pipeline.state_path), "syncs": out}


def status_lines(report: dict[str, Any], mask: Any = lambda text: text) -> Iterator[str]:
    """The report as text: a table of the syncs, then the last run and the failures of each."""
    syncs: dict[str, Any] = report["syncs"]
    yield f"state: {report['state']}" + ("" if any(e["last_run"] for e in syncs.values()) else
                                         " (no pass has run yet)")
    width = max([4, *(len(printable(n)) for n in syncs)])
    yield (f"{'sync':<{width}} {'done':>8} {'skipped':>7} {'failed':>6} {'dead':>6} {'pending':>7} "
           f"{'gone':>6}  {'last run':<32} next due")
    for name, e in syncs.items():
        last = e["last_run"]
        last_text = f"{last['started_at'][:19]}Z {last['result'] or 'running'}" if last else "never"
        yield (f"{printable(name):<{width}} {e['done']:>8} {e['skipped']:>7} {e['failed']:>6} {e['dead']:>6} "
               f"{e['pending']:>7} {e['gone']:>6}  {last_text:<32} {e['next_due'] or '-'}")
    for name, e in syncs.items():
        last = e["last_run"]
        shown = printable(name)
        if last and last["ended_at"]:
            on = f" on {last['executor']}" if last.get("executor") else ""
            yield (f"  {shown}: last run{on} listed {last['listed']}, new {last['new']}, changed {last['changed']}, "
                   f"done {last['done']}, failed {last['failed']}, dead {last['dead']}, gone {last['gone']}"
                   + (f"; {printable(mask(last['error']))}" if last["error"] else ""))
        queue = e.get("events")
        if queue and queue.get("since"):
            lag = f", lag {queue['lag_seconds']:.1f}s" if queue.get("lag_seconds") is not None else ""
            yield (f"  {shown}: events ({queue['queue']}): {queue['messages']} message(s), {queue['objects']} "
                   f"object(s) since {queue['since'][:19]}Z; last event {(queue['last_event_at'] or '-')[:19]}{lag}"
                   + (f"; the last reconciliation found {last['missed']} object(s) events missed"
                      if last and last.get("missed") else ""))
        elif queue:
            yield f"  {shown}: events ({queue['queue']}): none received yet"
        actions = e.get("after")
        if actions and actions["pending"]:
            yield (f"  {shown}: after ({actions['action']}): {actions['pending']} pending"
                   + (f", {actions['failing']} failing: {printable(mask(actions['error'] or ''))}"
                      if actions["failing"] else ""))
        if last and last["result"] == "killed" and not last["ended_at"]:
            yield f"  {shown}: the last run did not finish: {last['error']}"
        for problem in e["problems"]:
            yield (f"  {shown}: {problem['status']} ({problem['attempts']} attempt(s)) "
                   f"{printable(problem['key'])}: {printable(mask(problem['error'] or ''))}")
        if (more := e["failed"] + e["dead"] - len(e["problems"])) > 0:
            yield f"  {shown}: and {more} more failed or dead (--problems 0 lists them all)"
