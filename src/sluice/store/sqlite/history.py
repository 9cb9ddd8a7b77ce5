"""Run history in SQLite: the same database file as the limits, in its own tables.

The tables (``sluice_history_*``) are created on first use by this module's own
connection; the limits tables and their schema version are never touched.
Writes take the database's writer lock file (``<db>.sluice/write.lock``), the
one the limits store takes, so a history batch queues fairly with limit steps
instead of making them sleep in SQLite's busy handler. Reads never wait (WAL).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from sluice import _fork
from sluice.errors import ConfigError, RunNotFound, StoreError
from sluice.store.history import (
    FlowRunDetail,
    FlowRunRecord,
    HistoryRecord,
    StateRecord,
    TaskRunDetail,
)
from sluice.store.history_rows import (
    FLOW_COLUMNS,
    STATE_COLUMNS,
    TASK_COLUMNS,
    check_list_limit,
    check_prune,
    check_run_id,
    flow_record,
    rows_of,
    task_record,
)
from sluice.store.sqlite.ipc import FileLock, write_lock_path

__all__ = ["SQLiteHistory", "from_url"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sluice_history_flow_runs (
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
);
CREATE INDEX IF NOT EXISTS sluice_history_flow_runs_created
    ON sluice_history_flow_runs (created_at);
CREATE TABLE IF NOT EXISTS sluice_history_task_runs (
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
);
CREATE INDEX IF NOT EXISTS sluice_history_task_runs_flow
    ON sluice_history_task_runs (flow_run_id);
CREATE TABLE IF NOT EXISTS sluice_history_states (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    flow_run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    timestamp REAL NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    limit_name TEXT,
    position INTEGER,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sluice_history_states_flow
    ON sluice_history_states (flow_run_id);
"""


def _bulk(verb: str, table: str, columns: str) -> str:
    """One statement inserting every row of a JSON array of rows (arrays of columns)."""
    names = [c.strip() for c in columns.split(",")]
    values = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(names)))
    return (
        f"{verb} INTO sluice_history_{table} ({columns}) SELECT {values} FROM json_each(?)"
    )


class SQLiteHistory:
    """Flow runs, task runs and states in ``sluice_history_*`` tables of a SQLite file."""

    def __init__(self, url: str, path: str) -> None:
        self.url = url
        self.path = path
        self._mutex = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._file_lock: FileLock | None = None
        self._closed = False
        _fork.track(self, SQLiteHistory._after_fork)

    # ------------------------------------------------------------- plumbing

    def _connect(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _write_lock(self) -> AbstractContextManager[object]:
        if self._file_lock is None:
            self._file_lock = FileLock(write_lock_path(self.path))
        return self._file_lock

    def _after_fork(self) -> None:
        # A forked child opens its own connection; the parent's stays unclosed.
        _fork.keep_unclosed(self._conn, self._file_lock)
        self._mutex = threading.Lock()
        self._conn, self._file_lock = None, None

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"run history on {self.url} is closed")
        if self._conn is None:
            conn = self._connect()
            with self._write_lock():
                conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._mutex:
                conn = self._connection()
                with self._write_lock():
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        yield conn
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
        except sqlite3.Error as exc:
            raise StoreError(f"run history on {self.url} failed: {exc}") from exc

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        try:
            with self._mutex:
                return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"run history on {self.url} failed: {exc}") from exc

    # ------------------------------------------------------------- the protocol

    def write(self, batch: Sequence[HistoryRecord]) -> None:
        """Upsert runs and insert states, in one transaction.

        Each table gets ONE statement whatever the batch's size (its rows travel as one
        JSON array): the sqlite3 module releases and takes back the GIL around every
        step, so row-by-row inserts from a busy process would hold the database's write
        lock for as long as the other threads keep the GIL.
        """
        rows = rows_of(batch)
        if not rows:
            return
        flows = json.dumps(list(rows.flows.values())) if rows.flows else None
        tasks = json.dumps(list(rows.tasks.values())) if rows.tasks else None
        states = json.dumps(rows.states) if rows.states else None
        with self._tx() as conn:
            if flows is not None:
                conn.execute(_bulk("INSERT OR REPLACE", "flow_runs", FLOW_COLUMNS), (flows,))
            if tasks is not None:
                conn.execute(_bulk("INSERT OR REPLACE", "task_runs", TASK_COLUMNS), (tasks,))
            if states is not None:
                conn.execute(_bulk("INSERT OR IGNORE", "states", STATE_COLUMNS), (states,))

    def list_flow_runs(self, limit: int = 20) -> list[FlowRunRecord]:
        """The newest flow runs first."""
        check_list_limit(limit)
        rows = self._read(
            f"SELECT {FLOW_COLUMNS} FROM sluice_history_flow_runs"
            " ORDER BY created_at DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [flow_record(r) for r in rows]

    def get_flow_run(self, run_id: str) -> FlowRunDetail:
        """One flow run with its states and task runs."""
        check_run_id(run_id)
        try:
            with self._mutex:
                conn = self._connection()
                conn.execute("BEGIN")  # one consistent snapshot for the three reads
                try:
                    row = conn.execute(
                        f"SELECT {FLOW_COLUMNS} FROM sluice_history_flow_runs WHERE id = ?",
                        (run_id,),
                    ).fetchone()
                    task_rows = conn.execute(
                        f"SELECT {TASK_COLUMNS} FROM sluice_history_task_runs"
                        " WHERE flow_run_id = ? ORDER BY created_at, id",
                        (run_id,),
                    ).fetchall()
                    state_rows = conn.execute(
                        f"SELECT {STATE_COLUMNS} FROM sluice_history_states"
                        " WHERE flow_run_id = ? ORDER BY run_id, seq",
                        (run_id,),
                    ).fetchall()
                finally:
                    conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"run history on {self.url} failed: {exc}") from exc
        if row is None:
            raise RunNotFound(run_id)
        by_run: dict[str, list[StateRecord]] = {}
        for s in state_rows:
            by_run.setdefault(s[0], []).append(
                StateRecord(s[0], s[1], int(s[2]), s[3], float(s[4]), s[5], s[6], s[7])
            )
        tasks = tuple(TaskRunDetail(task_record(t), tuple(by_run.get(t[0], ()))) for t in task_rows)
        return FlowRunDetail(flow_record(row), tuple(by_run.get(run_id, ())), tasks)

    def prune(self, keep_runs: int, max_age_seconds: float | None = None) -> int:
        """Delete old ended flow runs with their task runs and states."""
        keep_runs, max_age_seconds = check_prune(keep_runs, max_age_seconds)
        cutoff = time.time() - max_age_seconds if max_age_seconds is not None else None
        with self._tx() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM sluice_history_flow_runs WHERE ended_at IS NOT NULL AND ("
                    " id NOT IN (SELECT id FROM sluice_history_flow_runs"
                    "  ORDER BY created_at DESC, id DESC LIMIT ?)"
                    " OR (? IS NOT NULL AND created_at < ?))",
                    (keep_runs, cutoff, cutoff),
                ).fetchall()
            ]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                conn.execute(
                    f"DELETE FROM sluice_history_states WHERE flow_run_id IN ({marks})", chunk
                )
                conn.execute(
                    f"DELETE FROM sluice_history_task_runs WHERE flow_run_id IN ({marks})", chunk
                )
                conn.execute(f"DELETE FROM sluice_history_flow_runs WHERE id IN ({marks})", chunk)
        return len(ids)

    def close(self) -> None:
        """Close the connection and the lock file."""
        with self._mutex:
            self._closed = True
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
            self._conn = None
            if self._file_lock is not None:
                self._file_lock.close()
                self._file_lock = None


def from_url(url: str) -> SQLiteHistory:
    """Open the history kept in the database file of ``sqlite:///path.db``."""
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        raise ConfigError(
            f"invalid SQLite URL {url!r}: use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    path = str(Path(rest[1:]).expanduser().resolve())
    return SQLiteHistory(f"sqlite:///{path}", path)
