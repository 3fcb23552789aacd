"""What the state file records besides the objects' ledger: runs, status, bucket-event
counters, pending ``after:`` actions and the committed length of output files.

A mixin of :class:`flexingest.state.State` (it uses its connection and transactions).
"""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

#: the object counts ``status`` shows per sync
STATUS_COUNTS = ("done", "skipped", "failed", "dead", "pending", "gone")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(message: str | None) -> str | None:
    """A message as storable text: a lone surrogate (a file name in bytes that are not UTF-8,
    echoed by a step) is written as its escape instead of failing the whole commit."""
    if message is None or message.isascii():
        return message
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


class Records:
    """Runs and status, event counters, after actions, output lengths (see the module docstring)."""

    db: sqlite3.Connection

    if TYPE_CHECKING:
        def transaction(self, *, immediate: bool = True) -> contextlib.AbstractContextManager[sqlite3.Connection]:
            ...

    def note_events(self, sync: str, messages: int, objects: int, last_event_at: str | None,
                    lag_seconds: float | None) -> None:
        """Count what a receive from a sync's queue brought, none included (``status`` shows it;
        the reconciliation counts as missed what changed before the last receive)."""
        now = now_iso()
        with self.transaction() as db:
            db.execute("""INSERT INTO event_stats (sync, since, messages, objects, last_message_at, last_checked_at,
                                                   last_event_at, lag_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                          ON CONFLICT (sync) DO UPDATE SET messages = messages + excluded.messages,
                              objects = objects + excluded.objects,
                              last_message_at = coalesce(excluded.last_message_at, last_message_at),
                              last_checked_at = excluded.last_checked_at,
                              last_event_at = coalesce(excluded.last_event_at, last_event_at),
                              lag_seconds = coalesce(excluded.lag_seconds, lag_seconds)""",
                       (sync, now, messages, objects, now if messages else None, now, last_event_at, lag_seconds))

    def event_stats(self) -> dict[str, dict[str, Any]]:
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'event_stats'").fetchone():
            return {}  # a state file of a flexingest before events (status reads, never migrates)
        return {r["sync"]: {k: r[k] for k in r.keys() if k != "sync"}
                for r in self.db.execute("SELECT * FROM event_stats")}

    def missed_by_events(self, since: str, before: float) -> int:
        # ``since``, ``before``: the first receive of events, and the last receive minus their lateness
        """Of the last plan, the new and changed objects modified after events were consumed
        (``since``, ISO) and before ``before`` (epoch seconds): what events did not announce."""
        from datetime import datetime

        start = datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
        row = self.db.execute("""SELECT count(*) FROM temp.todo WHERE reason IN ('new', 'changed')
                                 AND modified IS NOT NULL AND modified > ? AND modified < ?""",
                              (start, before)).fetchone()
        return int(row[0])

    def pending_after(self, sync: str, limit: int = 1000) -> list[sqlite3.Row]:
        """``after:`` actions recorded with a done and not yet carried out, oldest first."""
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'after_actions'").fetchone():
            return []
        return self.db.execute("""SELECT key, version, action, attempts FROM after_actions WHERE sync = ?
                                  ORDER BY updated_at LIMIT ?""", (sync, limit)).fetchall()

    def after_settled(self, sync: str, results: list[tuple[str, str, str | None]]) -> None:
        """Record what the actions did: ``(key, version, None)`` done, ``(key, version, error)`` failed."""
        now = now_iso()
        with self.transaction() as db:
            for key, version, error in results:
                if error is None:
                    db.execute("DELETE FROM after_actions WHERE sync = ? AND key = ? AND version = ?",
                               (sync, key, version))
                else:
                    db.execute("""UPDATE after_actions SET attempts = attempts + 1, error = ?, updated_at = ?
                                  WHERE sync = ? AND key = ? AND version = ?""",
                               (_text(error), now, sync, key, version))

    def after_status(self) -> dict[str, dict[str, Any]]:
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'after_actions'").fetchone():
            return {}
        out: dict[str, dict[str, Any]] = {}
        for r in self.db.execute("""SELECT sync, count(*) AS pending, sum(attempts > 0) AS failing,
                                           max(CASE WHEN attempts > 0 THEN error END) AS error
                                    FROM after_actions GROUP BY sync"""):
            out[r["sync"]] = {"pending": r["pending"], "failing": r["failing"] or 0, "error": r["error"]}
        return out

    def output_length(self, path: str, size: int) -> int:
        """The length of an output file (``write_jsonl``) as of the last commit. A file new to the
        state is recorded with its ``size`` now (what it held before flexingest wrote to it)."""
        row = self.db.execute("SELECT length FROM outputs WHERE path = ?", (path,)).fetchone()
        if row is not None:
            return int(row[0])
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO outputs (path, length, updated_at) VALUES (?, ?, ?)",
                       (path, size, now_iso()))
        return size

    # ------------------------------------------------------------------ runs and status

    def start_run(self, sync: str, kind: str, started_at: str | None = None, *, executor: str | None = None) -> int:
        """Record the start of a pass. Its caller holds the state lock, so a run of this sync
        that never recorded its end belongs to a process that died (kill -9, power loss)."""
        with self.transaction() as db:
            db.execute("""UPDATE runs SET result = 'killed', ended_at = NULL,
                          error = 'the process stopped before it recorded the end of this pass'
                          WHERE sync = ? AND ended_at IS NULL AND result IS NULL""", (sync,))
            cur = db.execute("INSERT INTO runs (sync, kind, started_at, executor) VALUES (?, ?, ?, ?)",
                             (sync, kind, started_at or now_iso(), executor))
            return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, counts: dict[str, int], result: str, error: str | None = None) -> None:
        cols = ("listed", "new", "changed", "done", "failed", "dead", "gone", "missed")
        with self.transaction() as db:
            db.execute(f"""UPDATE runs SET ended_at = ?, result = ?, error = ?,
                           {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?""",
                       (now_iso(), result, _text(error), *(int(counts.get(c, 0)) for c in cols), run_id))

    def status(self) -> dict[str, dict[str, Any]]:
        """Per sync: object counts by status, and the last run."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.db.execute("""
                SELECT sync,
                       sum(gone_at IS NULL AND status = 'done') AS done,
                       sum(gone_at IS NULL AND status = 'skipped') AS skipped,
                       sum(gone_at IS NULL AND status = 'failed') AS failed,
                       sum(gone_at IS NULL AND status = 'dead') AS dead,
                       sum(gone_at IS NULL AND status = 'pending') AS pending,
                       sum(gone_at IS NOT NULL) AS gone
                FROM objects GROUP BY sync"""):
            out[r["sync"]] = {k: r[k] for k in STATUS_COUNTS}
        for r in self.db.execute("""SELECT * FROM runs WHERE id IN (SELECT max(id) FROM runs GROUP BY sync)"""):
            entry = out.setdefault(r["sync"], dict.fromkeys(STATUS_COUNTS, 0))
            entry["last_run"] = {k: r[k] for k in r.keys() if k not in ("id", "sync")}
        return out

    def problems(self, sync: str, limit: int | None = 20) -> list[sqlite3.Row]:
        """Failed and dead objects of a sync, most recent first (all of them if ``limit`` is None)."""
        return self.db.execute("""SELECT key, status, attempts, error, updated_at FROM objects
                                  WHERE sync = ? AND status IN ('failed', 'dead') AND gone_at IS NULL
                                  ORDER BY updated_at DESC LIMIT ?""",
                               (sync, -1 if limit is None else limit)).fetchall()

    def objects(self, sync: str) -> list[sqlite3.Row]:
        """Every row of a sync (for tests and small inspections)."""
        return self.db.execute("SELECT * FROM objects WHERE sync = ? ORDER BY key", (sync,)).fetchall()
