"""The SQLite run history's tables: created on first use, migrated in place.

``sluice_history_meta`` holds the layout's version (:data:`HISTORY_VERSION`); a
database whose history tables predate it is version 1. Migrations run in the write
transaction that opens the history, and never touch the limits' tables.
"""

from __future__ import annotations

import sqlite3

from sluice.errors import StoreError
from sluice.store.history_rows import HISTORY_VERSION

__all__ = ["create_or_migrate", "history_version"]

_TABLES_V1 = (
    """CREATE TABLE IF NOT EXISTS sluice_history_flow_runs (
    id TEXT PRIMARY KEY,
    flow TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    message TEXT NOT NULL DEFAULT '',
    parent_id TEXT,
    host TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL DEFAULT 0
)""",
    """CREATE INDEX IF NOT EXISTS sluice_history_flow_runs_created
    ON sluice_history_flow_runs (created_at)""",
    """CREATE TABLE IF NOT EXISTS sluice_history_task_runs (
    id TEXT PRIMARY KEY,
    flow_run_id TEXT NOT NULL,
    task TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    message TEXT NOT NULL DEFAULT '',
    limits TEXT NOT NULL DEFAULT '[]',
    occupy INTEGER NOT NULL DEFAULT 1,
    attempts INTEGER NOT NULL DEFAULT 0,
    tags TEXT NOT NULL DEFAULT '[]'
)""",
    """CREATE INDEX IF NOT EXISTS sluice_history_task_runs_flow
    ON sluice_history_task_runs (flow_run_id)""",
    """CREATE TABLE IF NOT EXISTS sluice_history_states (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    flow_run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    timestamp REAL NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    limit_name TEXT,
    position INTEGER,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID""",
    """CREATE INDEX IF NOT EXISTS sluice_history_states_flow
    ON sluice_history_states (flow_run_id)""",
)
"""Version 1 of the history tables, as it was first released (the base of every store)."""

_MIGRATE_1_TO_2 = (
    "ALTER TABLE sluice_history_flow_runs ADD COLUMN traceback TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE sluice_history_flow_runs ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE sluice_history_task_runs ADD COLUMN traceback TEXT NOT NULL DEFAULT ''",
    """CREATE INDEX sluice_history_flow_runs_open
    ON sluice_history_flow_runs (owner) WHERE ended_at IS NULL""",
    """CREATE TABLE sluice_history_owners (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL DEFAULT 0,
    beat_at REAL NOT NULL,
    every REAL NOT NULL
)""",
    """CREATE TABLE sluice_history_logs (
    flow_run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    timestamp REAL NOT NULL,
    level INTEGER NOT NULL,
    logger TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (flow_run_id, seq)
) WITHOUT ROWID""",
    "CREATE TABLE sluice_history_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT INTO sluice_history_meta (key, value) VALUES ('version', '2')",
)
"""Version 1 to 2: owners and their heartbeats (runs of a gone process end Crashed),
tracebacks, and run logs. Existing runs have no owner: they are never ended Crashed."""


def history_version(conn: sqlite3.Connection) -> int:
    """The history tables' version: 0 if there are none, 1 if they predate versions."""
    tables = {
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name IN ('sluice_history_meta', 'sluice_history_flow_runs')"
        )
    }
    if "sluice_history_meta" in tables:
        row = conn.execute("SELECT value FROM sluice_history_meta WHERE key = 'version'").fetchone()
        return int(row[0]) if row is not None else 1
    return 1 if "sluice_history_flow_runs" in tables else 0


def create_or_migrate(conn: sqlite3.Connection, url: str) -> None:
    """In an open write transaction: create the history tables, or bring them to this version."""
    version = history_version(conn)
    if version > HISTORY_VERSION:
        raise StoreError(
            f"the run history on {url} has version {version}, newer than this "
            f"Sluice understands ({HISTORY_VERSION}); upgrade Sluice"
        )
    steps = (_TABLES_V1 if version == 0 else ()) + (_MIGRATE_1_TO_2 if version < 2 else ())
    for statement in steps:
        conn.execute(statement)
