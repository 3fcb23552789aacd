"""The state file: which version of which key each sync has processed, and its runs.

SQLite in WAL mode, with named migrations recorded in a table and applied forward in a
transaction each. A file that is not ours, is empty, truncated or fails
``PRAGMA quick_check`` is refused, never reset: a reset would reprocess a whole bucket.

A pass streams its listing into a temporary table and diffs it against ``objects``
with SQL, so neither the listing nor the state is ever held in memory.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from .exceptions import StateError
from .migrations import MIGRATIONS as MIGRATIONS  # what the tests and tools read from here
from .migrations import apply, newer_schema
from .records import Records, _text, now_iso

APPLICATION_ID = 0x466C7849  # "FlxI", in the SQLite header: marks the file as ours
SQLITE_MAGIC = b"SQLite format 3\x00"

#: What the diff says of a listed key. Processed: new, changed, retry.
CLASSIFY = """
    CASE
        WHEN L.skip IS NOT NULL THEN 'filtered'
        WHEN O.key IS NULL THEN 'new'
        WHEN O.version IS NOT L.version THEN
            CASE WHEN O.status = 'done' AND :ignore_changes THEN 'ignored' ELSE 'changed' END
        WHEN O.status IN ('done', 'skipped') THEN 'done'
        WHEN O.status = 'dead' THEN 'dead'
        ELSE 'retry'
    END
"""
TO_PROCESS = ("new", "changed", "retry")


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection that never writes anything, beside the file included.

    While a writer runs, its ``-wal`` and ``-shm`` files exist and are shared (``mode=ro``).
    With no ``-wal`` the whole state is in the file: it is read as it is (``immutable``),
    which creates no ``-wal``/``-shm`` of its own, in a read-only folder as anywhere else.
    """
    uri = path.resolve().as_uri()
    mode = "mode=ro" if Path(f"{path}-wal").exists() else "immutable=1"
    return sqlite3.connect(f"{uri}?{mode}", uri=True, timeout=30, isolation_level=None)


@dataclass
class Plan:
    """The diff of one listing against the state: how many keys fall in each class."""

    counts: dict[str, int] = field(default_factory=dict)

    @property
    def to_process(self) -> int:
        return sum(self.counts.get(k, 0) for k in TO_PROCESS)

    @property
    def listed(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Outcome:
    """What happened to one object, to be recorded."""

    key: str
    version: str
    size: int | None
    modified: float | None
    status: str  # done | skipped | failed | gone
    error: str | None = None
    #: a failure that trying later may cure (timeouts, 5xx, unreachable): an outage, not the
    #: object's fault; it is not counted towards max_attempts
    transient: bool = False
    #: a failure no retry can cure (unsupported, encrypted, corrupt): the object is dead at once
    permanent: bool = False
    #: not stored: no other object can succeed either (a destination is missing or refuses us)
    halt: bool = False


class State(Records):
    """One connection to a state file. Use from one thread."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True, check: bool = True,
                 readonly: bool = False) -> None:
        """Open (or create) a state file; ``":memory:"`` gives a throwaway one.

        ``check`` runs ``PRAGMA quick_check`` on an existing file, in the background (it
        reads the whole file): nothing is written before :meth:`verify` has seen it pass.
        ``readonly`` (``status``) never writes, never migrates, and works on a file or
        folder this user cannot write.
        """
        self._check_thread: threading.Thread | None = None
        self._check_error: str | None = None
        self.path = Path(path)
        self.readonly = readonly
        memory = str(path) == ":memory:"
        existed = not memory and self.path.exists()
        if existed:
            self._check_header()
            if not readonly:
                self._check_writable()
        elif not create or readonly:
            raise StateError(f"state file {self.path} does not exist yet (no pass has run)")
        elif not memory:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StateError(f"cannot create the state folder {self.path.parent}: {exc.strerror}") from None
            self._create()
            existed, check = True, False
        try:
            if readonly:
                self.db = self._connect_readonly()
            else:
                self.db = sqlite3.connect(str(path) if memory else self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state file {self.path}: {exc}") from None
        self.db.row_factory = sqlite3.Row
        try:
            if existed:
                self._check_foreign()
                if check:
                    self._start_quick_check()
            if readonly:
                self._check_schema()
            else:
                self._wal()
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.execute("PRAGMA temp_store=FILE")
                self._migrate(new=not existed)
        except sqlite3.DatabaseError as exc:
            self._join_check()  # the checker's connection first: the last one out removes -wal and -shm
            self.db.close()
            corrupt = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
            raise StateError(self._refusal(f"it is corrupt (SQLite says: {exc})" if corrupt
                                           else f"SQLite says: {exc}")) from None
        except BaseException:
            self._join_check()
            self.db.close()  # a refused file keeps no connection (nor -wal and -shm files) open
            raise

    def _create(self) -> None:
        """A new state file appears whole: made under a temporary name, then linked into place.

        Another process opening the path meanwhile never sees an empty file (which would be
        refused as truncated); when two create it at once, one link wins and both use it.
        """
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.new")
        try:
            self.db = sqlite3.connect(tmp, timeout=30, isolation_level=None)
            try:
                # WAL from the start: the mode is kept in the file, so that processes opening it
                # at once never convert it concurrently (SQLite answers "database is locked" to
                # that, whatever the busy timeout)
                self.db.execute("PRAGMA journal_mode=WAL")
                self._migrate(new=True)
            finally:
                self.db.close()
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another process created it first: use theirs
        except sqlite3.Error as exc:
            raise StateError(f"cannot create state file {self.path}: {exc}") from None
        except OSError as exc:
            raise StateError(f"cannot create state file {self.path}: {exc.strerror}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _wal(self, patience: float = 30.0) -> None:
        """Write-ahead logging. Turning a file written in another journal mode (by an older
        flexingest) to WAL needs it alone; SQLite does not wait for that, so wait here."""
        deadline = time.monotonic() + patience
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                busy = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _connect_readonly(self) -> sqlite3.Connection:
        return connect_readonly(self.path)

    def _check_schema(self) -> None:
        """A file opened read-only is not migrated: refuse one written by a newer flexingest."""
        has_table = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'migrations'").fetchone()
        if not has_table:
            raise StateError(self._refusal("it has no flexingest tables (no pass has completed its set-up)"))
        self._refuse_newer(newer_schema(self.db))

    # ------------------------------------------------------------------ opening

    def _refusal(self, why: str) -> str:
        return (f"state file {self.path} cannot be used: {why}. It was not changed. "
                f"Restore it from a backup, or move it away to start over "
                f"(every object will then be processed again).")

    def _check_header(self) -> None:
        if self.path.is_dir():
            raise StateError(self._refusal("it is a folder, not a file"))
        try:
            with open(self.path, "rb") as f:
                head = f.read(100)
        except OSError as exc:
            raise StateError(f"cannot read state file {self.path}: {exc.strerror}") from None
        if not head:
            raise StateError(self._refusal("the file is empty (truncated?)"))
        if not head.startswith(SQLITE_MAGIC):
            raise StateError(self._refusal("it is not a SQLite database (corrupt, or another program's file)"))
        if len(head) < 100:
            raise StateError(self._refusal("the file is truncated"))
        app_id = int.from_bytes(head[68:72], "big")
        if app_id not in (0, APPLICATION_ID):
            raise StateError(self._refusal(f"it belongs to another program (application id {app_id:#x})"))

    def _check_writable(self) -> None:
        """SQLite would open a read-only file read-only, then fail at the first write."""
        for target, what in ((self.path, "the file"), (self.path.parent, f"its folder {self.path.parent}")):
            if not os.access(target, os.W_OK):
                raise StateError(
                    f"state file {self.path} cannot be used: {what} is not writable by this user. "
                    f"It was not changed. Fix the permissions: flexingest writes the file and creates "
                    f"{self.path.name}-wal and {self.path.name}-shm beside it.")

    def _start_quick_check(self) -> None:
        def check() -> None:
            try:
                con = connect_readonly(self.path)
                try:
                    rows = [r[0] for r in con.execute("PRAGMA quick_check").fetchall()]
                finally:
                    con.close()
                if rows != ["ok"]:
                    found = [line.strip() for row in rows[:3] for line in str(row).splitlines() if line.strip()]
                    self._check_error = "it is corrupt (" + "; ".join(found) + ")"
            except sqlite3.Error as exc:
                self._check_error = f"it is corrupt (SQLite says: {exc})"

        self._check_thread = threading.Thread(target=check, name="flexingest-state-check", daemon=True)
        self._check_thread.start()

    def _join_check(self) -> None:
        if self._check_thread is not None:
            self._check_thread.join()
            self._check_thread = None

    def verify(self) -> None:
        """Wait for the integrity check started at open; refuse the file if it failed."""
        self._join_check()
        if self._check_error:
            raise StateError(self._refusal(self._check_error))

    def _check_foreign(self) -> None:
        app_id = self.db.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app_id != APPLICATION_ID and tables:
            raise StateError(self._refusal(f"it is another program's SQLite database (tables: "
                                           f"{', '.join(sorted(tables)[:5])})"))

    def _migrate(self, *, new: bool) -> None:
        self._refuse_newer(apply(self.db, self.transaction, APPLICATION_ID, new=new))

    def _refuse_newer(self, schema: str | None) -> None:
        if schema:
            raise StateError(self._refusal(f"it was written by a newer flexingest (schema {schema}); "
                                           "upgrade flexingest"))

    @contextlib.contextmanager
    def transaction(self, *, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction; ``immediate=False`` for work on temporary tables only.

        A write transaction first waits for the integrity check: nothing is written to a
        file that turns out corrupt.
        """
        if immediate:
            self.verify()
        try:
            self.db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield self.db
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            else:
                self.db.execute("COMMIT")
        except sqlite3.Error as exc:  # disk full, I/O error, locked for too long: nothing was committed
            if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                self.verify()  # a corrupt page met before the check finished: the check's refusal
                raise StateError(self._refusal(f"it is corrupt (SQLite says: {exc})")) from exc
            raise StateError(f"state file {self.path}: {exc}; nothing of this batch was recorded "
                             f"(those objects are processed again next time)") from exc

    def close(self) -> None:
        self._join_check()
        self.db.close()

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ listing and diff

    def begin_listing(self) -> None:
        db = self.db
        db.execute("DROP TABLE IF EXISTS temp.listing")
        db.execute("DROP TABLE IF EXISTS temp.todo")
        # a plain table: appending is cheap; it is indexed only if some objects may be gone
        db.execute("CREATE TEMP TABLE listing (key TEXT NOT NULL, version TEXT NOT NULL, size INTEGER, "
                   "modified REAL, skip TEXT)")
        self._listed = 0
        self._gone_possible = True
        self._reappeared = 0

    def add_listing(self, rows: list[tuple[str, str, int, float | None, str | None]]) -> None:
        with self.transaction(immediate=False) as db:
            db.executemany("INSERT INTO temp.listing VALUES (?, ?, ?, ?, ?)", rows)
        self._listed += len(rows)

    def add_keys(self, rows: Iterable[tuple[str, str, int, float | None]]) -> None:
        """List exactly these objects (``flexingest process``): all processed, whatever their state."""
        self.add_listing([(k, v, s, m, None) for k, v, s, m in rows])

    def plan(self, sync: str, *, ignore_changes: bool = False, force: bool = False,
             everything: bool = False) -> Plan:
        """Diff the listing against the state into a ``todo`` table; count each class.

        Only keys that are not plainly done go into ``todo`` (all of them with
        ``everything``, for ``--dry-run``). ``force`` processes every listed key whatever
        the state says (``process``).
        """
        db = self.db
        params = {"sync": sync, "ignore_changes": int(ignore_changes)}
        reason = "'new'" if force else CLASSIFY
        where = "" if everything or force else (
            "WHERE L.skip IS NOT NULL OR O.key IS NULL OR O.version IS NOT L.version "
            "OR O.status NOT IN ('done', 'skipped') OR O.gone_at IS NOT NULL")
        with self.transaction(immediate=False):
            db.execute("DROP TABLE IF EXISTS temp.todo")
            db.execute(f"""
                CREATE TEMP TABLE todo AS
                SELECT L.key AS key, L.version AS version, L.size AS size, L.modified AS modified,
                       L.skip AS skip, {reason} AS reason,
                       O.key IS NULL AS unknown, O.gone_at IS NOT NULL AS was_gone
                FROM temp.listing L LEFT JOIN objects O ON O.sync = :sync AND O.key = L.key
                {where}
            """, params)
        counts: dict[str, int] = {}
        unknown = reappeared = in_todo = 0
        for r in db.execute("SELECT reason, count(*), sum(unknown), sum(was_gone) FROM temp.todo GROUP BY reason"):
            counts[r[0]] = r[1]
            in_todo += r[1]
            unknown += r[2] or 0
            reappeared += r[3] or 0
        if not everything and not force:
            counts["done"] = counts.get("done", 0) + self._listed - in_todo
        # objects the listing may no longer show: only then is the anti-join of mark_gone needed
        present = db.execute("SELECT count(*) FROM objects WHERE sync = ? AND gone_at IS NULL", (sync,)).fetchone()[0]
        self._gone_possible = present > self._listed - unknown - reappeared
        self._reappeared = reappeared
        return Plan(counts)

    def planned(self, batch: int = 500) -> Iterator[list[sqlite3.Row]]:
        """The keys to process, in batches, in listing order."""
        last = 0
        placeholders = ",".join("?" * len(TO_PROCESS))
        while True:
            rows = self.db.execute(
                f"SELECT rowid, * FROM temp.todo WHERE rowid > ? AND reason IN ({placeholders}) "
                f"ORDER BY rowid LIMIT ?", (last, *TO_PROCESS, batch)).fetchall()
            if not rows:
                return
            last = rows[-1]["rowid"]
            yield rows

    def explain(self) -> Iterator[tuple[str, str, str | None]]:
        """Every listed key with its class and, for filtered keys, why (``--dry-run``)."""
        yield from self.db.execute("SELECT reason, key, skip FROM temp.todo ORDER BY rowid")

    def mark_keys_gone(self, sync: str, keys: Iterable[str]) -> int:
        """These objects were deleted (a bucket event said so): marked gone, never reprocessed."""
        keys = list(keys)
        if not keys:
            return 0
        now = now_iso()
        with self.transaction() as db:
            return sum(db.execute("""UPDATE objects SET gone_at = ?, updated_at = ? WHERE sync = ? AND key = ?
                                     AND gone_at IS NULL""", (now, now, sync, key)).rowcount for key in keys)

    def would_be_gone(self, sync: str) -> Iterator[str]:
        """The keys :meth:`mark_gone` would mark (``--dry-run``)."""
        if not self._gone_possible:
            return
        self.db.execute("CREATE INDEX IF NOT EXISTS temp.listing_key ON listing (key)")
        for row in self.db.execute("""SELECT key FROM objects WHERE sync = ? AND gone_at IS NULL
                                      AND NOT EXISTS (SELECT 1 FROM temp.listing L WHERE L.key = objects.key)
                                      ORDER BY key""", (sync,)):
            yield row[0]

    def mark_gone(self, sync: str) -> int:
        """Objects of the sync that the (complete) listing no longer shows."""
        if not self._gone_possible:
            return 0  # every present object was listed: no need to look
        self.db.execute("CREATE INDEX IF NOT EXISTS temp.listing_key ON listing (key)")
        with self.transaction() as db:
            cur = db.execute("""UPDATE objects SET gone_at = :now, updated_at = :now
                                WHERE sync = :sync AND gone_at IS NULL
                                AND NOT EXISTS (SELECT 1 FROM temp.listing L WHERE L.key = objects.key)""",
                             {"sync": sync, "now": now_iso()})
            return cur.rowcount

    def unmark_gone(self, sync: str) -> None:
        """Objects listed again after they were marked gone."""
        if not self._reappeared:
            return
        with self.transaction() as db:
            db.execute("""UPDATE objects SET gone_at = NULL, updated_at = :now
                          WHERE sync = :sync AND gone_at IS NOT NULL
                          AND key IN (SELECT key FROM temp.todo WHERE was_gone)""",
                       {"sync": sync, "now": now_iso()})

    # ------------------------------------------------------------------ outcomes

    def record(self, sync: str, outcomes: list[Outcome], max_attempts: int,
               outputs: Mapping[str, int] | None = None, after: str | None = None) -> dict[str, int]:
        """Commit a batch of outcomes in one transaction; returns how many became dead.

        A failure counts one attempt; ``max_attempts`` of them make the object dead. A
        transient failure (an outage) counts none; a permanent one makes it dead at once.
        A new version starts the count again.
        """
        now = now_iso()
        dead = 0
        same = "objects.version = excluded.version"
        with self.transaction() as db:
            for path, length in (outputs or {}).items():  # with the outcomes that account for them
                db.execute("""INSERT INTO outputs (path, length, updated_at) VALUES (?, ?, ?)
                              ON CONFLICT (path) DO UPDATE SET length = excluded.length,
                                  updated_at = excluded.updated_at""", (path, length, now))
            for o in outcomes:
                if o.status == "gone":
                    db.execute("""INSERT INTO objects (sync, key, version, size, modified, status, attempts,
                                                       error, gone_at, updated_at)
                                  VALUES (?, ?, ?, ?, ?, 'pending', 0, 'deleted before it was read', ?, ?)
                                  ON CONFLICT (sync, key) DO UPDATE SET gone_at = excluded.gone_at,
                                      updated_at = excluded.updated_at""",
                               (sync, o.key, o.version, o.size, o.modified, now, now))
                    continue
                if o.status == "done" and after is not None:  # its after: action, pending from this commit on
                    db.execute("""INSERT INTO after_actions (sync, key, version, action, attempts, error, updated_at)
                                  VALUES (?, ?, ?, ?, 0, NULL, ?)
                                  ON CONFLICT (sync, key) DO UPDATE SET version = excluded.version,
                                      action = excluded.action, attempts = 0, error = NULL,
                                      updated_at = excluded.updated_at""", (sync, o.key, o.version, after, now))
                if o.status in ("done", "skipped"):
                    db.execute(f"""INSERT INTO objects (sync, key, version, size, modified, status, attempts,
                                                        error, processed_at, gone_at, updated_at)
                                   VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, NULL, ?)
                                   ON CONFLICT (sync, key) DO UPDATE SET
                                       attempts = CASE WHEN {same} THEN objects.attempts + 1 ELSE 1 END,
                                       version = excluded.version, size = excluded.size,
                                       modified = excluded.modified, status = excluded.status,
                                       error = excluded.error, processed_at = excluded.processed_at,
                                       gone_at = NULL, updated_at = excluded.updated_at""",
                               (sync, o.key, o.version, o.size, o.modified, o.status, _text(o.error), now, now))
                    continue
                charge = 0 if o.transient else 1
                attempts = f"CASE WHEN {same} THEN objects.attempts + :charge ELSE :charge END"
                row = db.execute(f"""INSERT INTO objects (sync, key, version, size, modified, status, attempts,
                                                          error, gone_at, updated_at)
                               VALUES (:sync, :key, :version, :size, :modified,
                                       CASE WHEN :permanent OR (:charge AND 1 >= :max) THEN 'dead' ELSE 'failed' END,
                                       :charge, :error, NULL, :now)
                               ON CONFLICT (sync, key) DO UPDATE SET
                                   attempts = {attempts},
                                   status = CASE WHEN :permanent OR (:charge AND {attempts} >= :max)
                                                 THEN 'dead' ELSE 'failed' END,
                                   version = excluded.version, size = excluded.size,
                                   modified = excluded.modified, error = excluded.error,
                                   gone_at = NULL, updated_at = excluded.updated_at
                               RETURNING status""",
                                 {"sync": sync, "key": o.key, "version": o.version, "size": o.size,
                                  "modified": o.modified, "error": _text(o.error), "max": max_attempts,
                                  "now": now, "charge": charge, "permanent": int(o.permanent)}).fetchone()
                dead += row[0] == "dead"
        return {"dead": dead}

    def retry(self, sync: str | None = None) -> int:
        """Put failed and dead objects back to be processed on the next pass."""
        with self.transaction() as db:
            cur = db.execute("""UPDATE objects SET status = 'pending', attempts = 0, updated_at = ?
                                WHERE status IN ('failed', 'dead') AND (? IS NULL OR sync = ?)""",
                             (now_iso(), sync, sync))
            return cur.rowcount

