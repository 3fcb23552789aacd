"""The state file's schema: named migrations, applied forward in order, one transaction each.

A migration is never edited once released: a change of schema is a new entry at the end.
``State`` applies those a file lacks when it opens it (``flexingest status`` never does).
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import Callable

from .records import now_iso

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_initial", """
        CREATE TABLE objects (
            sync TEXT NOT NULL,
            key TEXT NOT NULL,
            version TEXT NOT NULL,
            size INTEGER,
            modified REAL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            processed_at TEXT,
            gone_at TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (sync, key)
        ) WITHOUT ROWID;
        CREATE INDEX objects_by_status ON objects (sync, status) WHERE status != 'done';
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            sync TEXT NOT NULL,
            kind TEXT NOT NULL,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            listed INTEGER NOT NULL DEFAULT 0,
            new INTEGER NOT NULL DEFAULT 0,
            changed INTEGER NOT NULL DEFAULT 0,
            done INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            dead INTEGER NOT NULL DEFAULT 0,
            gone INTEGER NOT NULL DEFAULT 0,
            result TEXT,
            error TEXT
        );
        CREATE INDEX runs_by_sync ON runs (sync, id);
    """),
    # "skipped" becomes a status of its own (it was "done" with an error starting "skipped: ")
    ("0002_skipped_status", """
        CREATE TABLE objects_new (
            sync TEXT NOT NULL,
            key TEXT NOT NULL,
            version TEXT NOT NULL,
            size INTEGER,
            modified REAL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'skipped', 'failed', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            processed_at TEXT,
            gone_at TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (sync, key)
        ) WITHOUT ROWID;
        INSERT INTO objects_new
            SELECT sync, key, version, size, modified,
                   CASE WHEN status = 'done' AND error LIKE 'skipped: %' THEN 'skipped' ELSE status END,
                   attempts,
                   CASE WHEN status = 'done' AND error LIKE 'skipped: %' THEN substr(error, 10) ELSE error END,
                   processed_at, gone_at, updated_at
            FROM objects;
        DROP TABLE objects;
        ALTER TABLE objects_new RENAME TO objects;
        CREATE INDEX objects_by_status ON objects (sync, status) WHERE status != 'done';
    """),
    # which executor ran a pass (threads, processes, dask): status says it
    ("0003_runs_executor", """
        ALTER TABLE runs ADD COLUMN executor TEXT
    """),
    # bucket events: what each sync's queue brought, and what its reconciliation listings found
    # that the events had missed
    ("0004_events", """
        CREATE TABLE event_stats (
            sync TEXT PRIMARY KEY,
            since TEXT NOT NULL,
            messages INTEGER NOT NULL DEFAULT 0,
            objects INTEGER NOT NULL DEFAULT 0,
            last_message_at TEXT,
            last_checked_at TEXT,
            last_event_at TEXT,
            lag_seconds REAL
        );
        ALTER TABLE runs ADD COLUMN missed INTEGER
    """),
    # the length of each write_jsonl file as of the last commit: what follows it is cut on open
    ("0005_outputs", """
        CREATE TABLE outputs (
            path TEXT PRIMARY KEY,
            length INTEGER NOT NULL,
            updated_at TEXT NOT NULL
        )
    """),
    # after: actions on source objects, recorded with their done and run after the commit
    ("0006_after_actions", """
        CREATE TABLE after_actions (
            sync TEXT NOT NULL,
            key TEXT NOT NULL,
            version TEXT NOT NULL,
            action TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (sync, key)
        ) WITHOUT ROWID
    """),
    # jobs of the HTTP API (POST /v1/data-process/async): kept until done, resumed after a restart
    ("0007_jobs", """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            connector TEXT NOT NULL,
            sync TEXT,
            keys TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
            results TEXT,
            error TEXT,
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT
        );
        CREATE INDEX jobs_unfinished ON jobs (created_at) WHERE status IN ('queued', 'running');
    """),
]


def newer_schema(db: sqlite3.Connection) -> str | None:
    """The newest migration the file has that this flexingest lacks (a newer one wrote it)."""
    applied = {r[0] for r in db.execute("SELECT name FROM migrations")}
    unknown = sorted(applied - {name for name, _ in MIGRATIONS})
    return unknown[-1] if unknown else None


def apply(db: sqlite3.Connection, transaction: Callable[[], AbstractContextManager[object]], application_id: int,
          *, new: bool) -> str | None:
    """Apply the migrations the file lacks, each in its own write ``transaction()``; returns the
    newer schema instead (applying nothing) when a newer flexingest wrote the file.

    Which ones are applied is read again inside each transaction: two processes opening a new
    file at once both succeed, the second finding the work done.
    """
    ours = db.execute("PRAGMA application_id").fetchone()[0] == application_id
    has_table = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'migrations'").fetchone()
    if new or not ours or not has_table:  # reads first: an up-to-date file is not written to here
        with transaction():
            db.execute(f"PRAGMA application_id={application_id}")
            db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    newer = newer_schema(db)
    if newer:
        return newer
    applied = {r[0] for r in db.execute("SELECT name FROM migrations")}
    for name, sql in MIGRATIONS:
        if name in applied:
            continue
        with transaction():
            if db.execute("SELECT 1 FROM migrations WHERE name = ?", (name,)).fetchone():
                continue  # another process applied it meanwhile
            for statement in sql.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT INTO migrations VALUES (?, ?)", (name, now_iso()))
    return None
