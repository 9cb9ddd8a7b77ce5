"""Run history in PostgreSQL: tables in the limits' schema, so one URL configures both.

The tables (``history_flow_runs``, ``history_task_runs``, ``history_states``) are
created on first use, in the store's schema (``?schema=``, default ``sluice``),
under the same advisory lock the store takes to create its own tables, so
processes starting together do not race. A batch is one transaction of upserts;
a state is inserted once (``ON CONFLICT DO NOTHING``). Retention is bounded by
:meth:`PostgresHistory.prune`, which the flow layer calls.

Writes and prunes commit without waiting for their WAL to reach disk
(``SET LOCAL synchronous_commit = off``): history is a record, not a decision
(nothing it holds keeps a limit from being exceeded), and a server crash may
lose its last fraction of a second, whole transactions only. The store's own
steps keep ``synchronous_commit`` as configured (a grant must survive a crash),
and no longer queue behind a disk flush for every history batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from sluice import _fork
from sluice.errors import RunNotFound, StoreError
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
from sluice.store.postgres.config import PgConfig, parse_url, translate

__all__ = ["PostgresHistory", "from_url"]

_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS {q};
CREATE TABLE IF NOT EXISTS {q}.history_flow_runs (
    id text PRIMARY KEY,
    flow text NOT NULL,
    state text NOT NULL,
    created_at float8 NOT NULL,
    started_at float8,
    ended_at float8,
    message text NOT NULL DEFAULT '',
    parent_id text,
    host text NOT NULL DEFAULT '',
    pid integer NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS history_flow_runs_created ON {q}.history_flow_runs (created_at, id);
CREATE TABLE IF NOT EXISTS {q}.history_task_runs (
    id text PRIMARY KEY,
    flow_run_id text NOT NULL,
    task text NOT NULL,
    state text NOT NULL,
    created_at float8 NOT NULL,
    started_at float8,
    ended_at float8,
    message text NOT NULL DEFAULT '',
    limits jsonb NOT NULL DEFAULT '[]',
    occupy integer NOT NULL DEFAULT 1,
    attempts integer NOT NULL DEFAULT 0,
    tags jsonb NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS history_task_runs_flow ON {q}.history_task_runs (flow_run_id);
CREATE TABLE IF NOT EXISTS {q}.history_states (
    run_id text NOT NULL,
    seq integer NOT NULL,
    flow_run_id text NOT NULL,
    name text NOT NULL,
    timestamp float8 NOT NULL,
    message text NOT NULL DEFAULT '',
    limit_name text,
    position integer,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX IF NOT EXISTS history_states_flow ON {q}.history_states (flow_run_id);
"""

_FLOW, _TASK, _STATE = FLOW_COLUMNS, TASK_COLUMNS, STATE_COLUMNS


def _upsert(table: str, columns: str) -> str:
    names = [c.strip() for c in columns.split(",")]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in names if c != "id")
    marks = ", ".join(["%s"] * len(names))
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT (id) DO UPDATE SET {updates}"
    )


class PostgresHistory:
    """Flow runs, task runs and states in ``history_*`` tables of the store's schema."""

    def __init__(self, config: PgConfig) -> None:
        self.url = config.url
        self._config = config
        self._q = config.quoted_schema
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        _fork.track(self, PostgresHistory._after_fork)

    # ------------------------------------------------------------- plumbing

    def _after_fork(self) -> None:
        # A forked child opens its own connection; the parent's stays unclosed.
        _fork.keep_unclosed(self._conn)
        self._lock = threading.Lock()
        self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise StoreError(f"run history on {self.url} is closed")
        if self._conn is not None and self._conn.closed:
            self._conn = None  # dropped by the server: open a fresh one
        if self._conn is None:
            conn = psycopg.connect(
                self._config.conninfo,
                application_name=self._config.application_name,
                prepare_threshold=None if not self._config.prepared else 5,
            )
            try:
                with conn.transaction():
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                        (f"sluice {self._q}",),
                    )
                    conn.execute(_SCHEMA.format(q=self._q))
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on this process's history connection, errors translated."""
        try:
            with self._lock:
                conn = self._connection()
                with conn.transaction():
                    yield conn
        except psycopg.Error as exc:
            raise translate(exc, self.url) from exc

    # ------------------------------------------------------------- the protocol

    def write(self, batch: Sequence[HistoryRecord]) -> None:
        """Upsert runs and insert states, in one transaction."""
        rows = rows_of(batch)
        if not rows:
            return
        q = self._q
        with self._tx() as conn, conn.cursor() as cur:
            cur.execute("SET LOCAL synchronous_commit = off")
            if rows.flows:
                cur.executemany(_upsert(f"{q}.history_flow_runs", _FLOW), list(rows.flows.values()))
            if rows.tasks:
                cur.executemany(_upsert(f"{q}.history_task_runs", _TASK), list(rows.tasks.values()))
            if rows.states:
                cur.executemany(
                    f"INSERT INTO {q}.history_states ({_STATE})"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    rows.states,
                )

    def list_flow_runs(self, limit: int = 20) -> list[FlowRunRecord]:
        """The newest flow runs first."""
        check_list_limit(limit)
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_FLOW} FROM {self._q}.history_flow_runs"
                " ORDER BY created_at DESC, id DESC LIMIT %s",
                (limit,),
            ).fetchall()
        return [flow_record(r) for r in rows]

    def get_flow_run(self, run_id: str) -> FlowRunDetail:
        """One flow run with its states and task runs."""
        check_run_id(run_id)
        q = self._q
        with self._tx() as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot
            row = conn.execute(
                f"SELECT {_FLOW} FROM {q}.history_flow_runs WHERE id = %s", (run_id,)
            ).fetchone()
            task_rows = conn.execute(
                f"SELECT {_TASK} FROM {q}.history_task_runs"
                " WHERE flow_run_id = %s ORDER BY created_at, id",
                (run_id,),
            ).fetchall()
            state_rows = conn.execute(
                f"SELECT {_STATE} FROM {q}.history_states"
                " WHERE flow_run_id = %s ORDER BY run_id, seq",
                (run_id,),
            ).fetchall()
        if row is None:
            raise RunNotFound(run_id)
        by_run: dict[str, list[StateRecord]] = {}
        for s in state_rows:
            by_run.setdefault(s[0], []).append(StateRecord(*s))
        tasks = tuple(TaskRunDetail(task_record(t), tuple(by_run.get(t[0], ()))) for t in task_rows)
        return FlowRunDetail(flow_record(row), tuple(by_run.get(run_id, ())), tasks)

    def prune(self, keep_runs: int, max_age_seconds: float | None = None) -> int:
        """Delete old ended flow runs with their task runs and states."""
        keep_runs, max_age_seconds = check_prune(keep_runs, max_age_seconds)
        cutoff = time.time() - max_age_seconds if max_age_seconds is not None else None
        q = self._q
        with self._tx() as conn:
            conn.execute("SET LOCAL synchronous_commit = off")
            ids = [
                r[0]
                for r in conn.execute(
                    f"SELECT id FROM {q}.history_flow_runs WHERE ended_at IS NOT NULL AND ("
                    f" id NOT IN (SELECT id FROM {q}.history_flow_runs"
                    "  ORDER BY created_at DESC, id DESC LIMIT %s)"
                    " OR created_at < %s::float8)",
                    (keep_runs, cutoff),
                ).fetchall()
            ]
            if ids:
                conn.execute(f"DELETE FROM {q}.history_states WHERE flow_run_id = ANY(%s)", (ids,))
                conn.execute(
                    f"DELETE FROM {q}.history_task_runs WHERE flow_run_id = ANY(%s)", (ids,)
                )
                conn.execute(f"DELETE FROM {q}.history_flow_runs WHERE id = ANY(%s)", (ids,))
        return len(ids)

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
            self._conn = None


def from_url(url: str) -> PostgresHistory:
    """Open the history kept beside the limits of a ``postgresql://`` URL."""
    return PostgresHistory(parse_url(url))
