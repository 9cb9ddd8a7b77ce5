"""Run history in PostgreSQL: tables in the limits' schema, so one URL configures both.

The tables (``history_flow_runs``, ``history_task_runs``, ``history_states``,
``history_logs``, ``history_owners``, ``history_meta``) are created on first use, in
the store's schema (``?schema=``, default ``sluice``), and migrated in place from
older layouts (``history_meta`` holds the version; tables from before it are version
1), under the same advisory lock the store takes to create its own tables, so
processes starting together do not race. A batch is one transaction of upserts;
a state or a log record is inserted once (``ON CONFLICT DO NOTHING``). Retention is
bounded by :meth:`PostgresHistory.prune`, which the flow layer calls.

An owner's heartbeat sets ``history_owners.expires_at`` to ``MISSED_BEATS``
intervals ahead by the server's clock: an owner whose ``expires_at`` has passed
(or that has no row) is gone, and a reader ends its open runs in a transaction that
locks them first (``FOR UPDATE SKIP LOCKED``: a run a writer is busy with is left for
a later read).

Writes and prunes commit without waiting for their WAL to reach disk
(``SET LOCAL synchronous_commit = off``): history is a record, not a decision
(nothing it holds keeps a limit from being exceeded), and a server crash may
lose its last fraction of a second, whole transactions only. The store's own
steps keep ``synchronous_commit`` as configured (a grant must survive a crash),
and no longer queue behind a disk flush for every history batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from sluice import _fork
from sluice.errors import RunNotFound, StoreError
from sluice.settings import history_heartbeat
from sluice.store.history import (
    MISSED_BEATS,
    FlowRunDetail,
    FlowRunRecord,
    HistoryRecord,
    RunLogRecord,
    StateRecord,
    TaskRunDetail,
)
from sluice.store.history_rows import (
    FLOW_COLUMNS,
    FLOW_WRITE_COLUMNS,
    HISTORY_VERSION,
    LOG_COLUMNS,
    STATE_COLUMNS,
    TASK_COLUMNS,
    Owner,
    Rows,
    check_list_limit,
    check_prune,
    check_run_id,
    crash_records,
    flow_record,
    log_record,
    new_owner_id,
    rows_of,
    task_record,
)
from sluice.store.postgres.config import PgConfig, parse_url, translate

__all__ = ["PostgresHistory", "from_url"]

_TABLES_V1 = """
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
"""Version 1 of the history tables, as it was first released (the base of every store)."""

_MIGRATE_1_TO_2 = """
ALTER TABLE {q}.history_flow_runs ADD COLUMN traceback text NOT NULL DEFAULT '';
ALTER TABLE {q}.history_flow_runs ADD COLUMN owner text NOT NULL DEFAULT '';
ALTER TABLE {q}.history_task_runs ADD COLUMN traceback text NOT NULL DEFAULT '';
CREATE INDEX history_flow_runs_open ON {q}.history_flow_runs (owner) WHERE ended_at IS NULL;
CREATE TABLE {q}.history_owners (
    id text PRIMARY KEY,
    host text NOT NULL DEFAULT '',
    pid integer NOT NULL DEFAULT 0,
    beat_at float8 NOT NULL,
    every float8 NOT NULL,
    expires_at float8 NOT NULL
);
CREATE TABLE {q}.history_logs (
    flow_run_id text NOT NULL,
    seq integer NOT NULL,
    run_id text NOT NULL,
    timestamp float8 NOT NULL,
    level integer NOT NULL,
    logger text NOT NULL DEFAULT '',
    message text NOT NULL DEFAULT '',
    PRIMARY KEY (flow_run_id, seq)
);
CREATE TABLE {q}.history_meta (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO {q}.history_meta (key, value) VALUES ('version', '2');
"""
"""Version 1 to 2: owners and their heartbeats (runs of a gone process end Crashed),
tracebacks, and run logs. Existing runs have no owner: they are never ended Crashed."""

_NOW = "extract(epoch from clock_timestamp())"
"""The server's clock, in seconds since the epoch: owners expire by it."""

_FLOW, _TASK, _STATE, _LOG = FLOW_COLUMNS, TASK_COLUMNS, STATE_COLUMNS, LOG_COLUMNS

log = logging.getLogger("sluice.store.postgres")


def _upsert(table: str, columns: str) -> str:
    names = [c.strip() for c in columns.split(",")]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in names if c != "id")
    marks = ", ".join(["%s"] * len(names))
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT (id) DO UPDATE SET {updates}"
    )


def _insert_once(table: str, columns: str) -> str:
    marks = ", ".join(["%s"] * len(columns.split(",")))
    return f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING"


class PostgresHistory:
    """Flow runs, task runs, states and logs in ``history_*`` tables of the store's schema."""

    def __init__(self, config: PgConfig) -> None:
        self.url = config.url
        self._config = config
        self._q = config.quoted_schema
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self._new_owner()
        _fork.track(self, PostgresHistory._after_fork)

    # ------------------------------------------------------------- plumbing

    def _new_owner(self) -> None:
        self._owner = new_owner_id()
        self._registered = False
        self._beat_at = 0.0  # time.monotonic() of this handle's last heartbeat

    def _after_fork(self) -> None:
        # A forked child opens its own connection; the parent's stays unclosed.
        _fork.keep_unclosed(self._conn)
        self._lock = threading.Lock()
        self._conn = None
        self._new_owner()

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
                    self._create_or_migrate(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _create_or_migrate(self, conn: psycopg.Connection[Any]) -> None:
        q = self._q
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q}")
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname IN ('history_meta', 'history_flow_runs')",
                (self._config.schema,),
            )
        }
        version = 1 if "history_flow_runs" in tables else 0
        if "history_meta" in tables:
            row = conn.execute(
                f"SELECT value FROM {q}.history_meta WHERE key = 'version'"
            ).fetchone()
            version = int(row[0]) if row is not None else 1
        if version > HISTORY_VERSION:
            raise StoreError(
                f"the run history on {self.url} has version {version}, newer than this "
                f"Sluice understands ({HISTORY_VERSION}); upgrade Sluice"
            )
        if version < 1:
            conn.execute(_TABLES_V1.format(q=q))
        if version < 2:
            conn.execute(_MIGRATE_1_TO_2.format(q=q))

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

    # ------------------------------------------------------------- owners

    def _beat_due(self) -> bool:
        """Whether a write that opens runs must renew the heartbeat too (none for a while)."""
        return not self._registered or time.monotonic() - self._beat_at >= history_heartbeat()

    def _beat(self, cur: Any) -> bool:
        """Renew this owner's heartbeat; whether its row was there already."""
        me = Owner.mine(self._owner)
        self._beat_at = time.monotonic()
        cur.execute(
            f"INSERT INTO {self._q}.history_owners (id, host, pid, beat_at, every, expires_at)"
            f" VALUES (%s, %s, %s, %s, %s, {_NOW} + %s)"
            " ON CONFLICT (id) DO UPDATE SET beat_at = EXCLUDED.beat_at,"
            " every = EXCLUDED.every, expires_at = EXCLUDED.expires_at"
            " RETURNING xmax <> 0",
            (me.id, me.host, me.pid, me.beat_at, me.every, me.every * MISSED_BEATS),
        )
        row = cur.fetchone()
        return bool(row[0]) if row is not None else False

    def _reap(self) -> None:
        """End the runs of owners that are gone as Crashed; best effort, never fails a read."""
        try:
            self._reap_now()
        except StoreError as exc:
            log.warning("sluice: could not end the runs of a gone process on %s: %s", self.url, exc)

    def _reap_now(self) -> None:
        q = self._q
        with self._tx() as conn:
            doomed = conn.execute(
                f"SELECT f.id, f.owner, o.host, o.pid, o.beat_at, o.every"
                f" FROM {q}.history_flow_runs f LEFT JOIN {q}.history_owners o ON o.id = f.owner"
                f" WHERE f.ended_at IS NULL AND f.owner <> '' AND f.owner <> %s"
                f" AND (o.id IS NULL OR o.expires_at < {_NOW})",
                (self._owner,),
            ).fetchall()
        if not doomed:
            return
        with self._tx() as conn, conn.cursor() as cur:
            cur.execute("SET LOCAL synchronous_commit = off")
            ids = [r[0] for r in doomed]
            locked = {
                r[0]
                for r in cur.execute(
                    f"SELECT id FROM {q}.history_flow_runs WHERE id = ANY(%s)"
                    " AND ended_at IS NULL ORDER BY id FOR UPDATE SKIP LOCKED",
                    (ids,),
                ).fetchall()
            }
            owners = sorted({r[1] for r in doomed})
            still_gone = {
                r[0]
                for r in cur.execute(
                    f"SELECT id FROM {q}.history_owners WHERE id = ANY(%s) AND expires_at < {_NOW}"
                    " FOR UPDATE",
                    (owners,),
                ).fetchall()
            }
            known = {
                r[0]
                for r in cur.execute(
                    f"SELECT id FROM {q}.history_owners WHERE id = ANY(%s)", (owners,)
                ).fetchall()
            }
            seen_gone = time.time()
            records: list[HistoryRecord] = []
            for run_id, owner_id, host, pid, beat_at, every in doomed:
                if run_id not in locked or (owner_id in known and owner_id not in still_gone):
                    continue  # ended meanwhile, a writer is on it, or its owner beat again
                owner = Owner(owner_id, host or "", pid or 0, beat_at, every or 0.0)
                detail = self._detail(cur, run_id)
                records += crash_records(detail, owner, seen_gone, "stopped its heartbeat")
            self._write_rows(cur, rows_of(records))
            cur.execute(f"DELETE FROM {q}.history_owners WHERE id = ANY(%s)", (sorted(still_gone),))

    # ------------------------------------------------------------- the protocol

    def write(self, batch: Sequence[HistoryRecord]) -> None:
        """Upsert runs and insert states and logs, in one transaction."""
        rows = rows_of(batch, self._owner)
        if not rows:
            return
        with self._tx() as conn, conn.cursor() as cur:
            cur.execute("SET LOCAL synchronous_commit = off")
            self._write_rows(cur, rows)
            if rows.open_flows and self._beat_due():
                self._beat(cur)
                self._registered = True

    def _write_rows(self, cur: Any, rows: Rows) -> None:
        q = self._q
        if rows.flows:
            cur.executemany(
                _upsert(f"{q}.history_flow_runs", FLOW_WRITE_COLUMNS), list(rows.flows.values())
            )
        if rows.tasks:
            cur.executemany(_upsert(f"{q}.history_task_runs", _TASK), list(rows.tasks.values()))
        if rows.states:
            cur.executemany(_insert_once(f"{q}.history_states", _STATE), rows.states)
        if rows.logs:
            cur.executemany(_insert_once(f"{q}.history_logs", _LOG), rows.logs)

    def heartbeat(self) -> bool:
        """Renew this process's heartbeat; False if its runs were ended as Crashed."""
        with self._tx() as conn, conn.cursor() as cur:
            cur.execute("SET LOCAL synchronous_commit = off")
            known = self._beat(cur)
        lost = self._registered and not known
        self._registered = True
        return not lost

    def list_flow_runs(self, limit: int = 20) -> list[FlowRunRecord]:
        """The newest flow runs first."""
        check_list_limit(limit)
        self._reap()
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
        self._reap()
        with self._tx() as conn, conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot
            return self._detail(cur, run_id)

    def _detail(self, cur: Any, run_id: str) -> FlowRunDetail:
        q = self._q
        row = cur.execute(
            f"SELECT {_FLOW} FROM {q}.history_flow_runs WHERE id = %s", (run_id,)
        ).fetchone()
        if row is None:
            raise RunNotFound(run_id)
        task_rows = cur.execute(
            f"SELECT {_TASK} FROM {q}.history_task_runs"
            " WHERE flow_run_id = %s ORDER BY created_at, id",
            (run_id,),
        ).fetchall()
        state_rows = cur.execute(
            f"SELECT {_STATE} FROM {q}.history_states WHERE flow_run_id = %s ORDER BY run_id, seq",
            (run_id,),
        ).fetchall()
        by_run: dict[str, list[StateRecord]] = {}
        for s in state_rows:
            by_run.setdefault(s[0], []).append(StateRecord(*s))
        tasks = tuple(TaskRunDetail(task_record(t), tuple(by_run.get(t[0], ()))) for t in task_rows)
        return FlowRunDetail(flow_record(row), tuple(by_run.get(run_id, ())), tasks)

    def get_logs(self, run_id: str) -> list[RunLogRecord]:
        """A flow run's log records in order."""
        check_run_id(run_id)
        q = self._q
        with self._tx() as conn:
            if (
                conn.execute(
                    f"SELECT 1 FROM {q}.history_flow_runs WHERE id = %s", (run_id,)
                ).fetchone()
                is None
            ):
                raise RunNotFound(run_id)
            rows = conn.execute(
                f"SELECT {_LOG} FROM {q}.history_logs WHERE flow_run_id = %s ORDER BY seq",
                (run_id,),
            ).fetchall()
        return [log_record(r) for r in rows]

    def prune(self, keep_runs: int, max_age_seconds: float | None = None) -> int:
        """Delete old ended flow runs with their task runs, states and logs."""
        keep_runs, max_age_seconds = check_prune(keep_runs, max_age_seconds)
        self._reap()
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
                for table in ("history_states", "history_logs", "history_task_runs"):
                    conn.execute(f"DELETE FROM {q}.{table} WHERE flow_run_id = ANY(%s)", (ids,))
                conn.execute(f"DELETE FROM {q}.history_flow_runs WHERE id = ANY(%s)", (ids,))
            conn.execute(  # owners gone that own no open run
                f"DELETE FROM {q}.history_owners o WHERE o.expires_at < {_NOW} AND NOT EXISTS ("
                f" SELECT 1 FROM {q}.history_flow_runs f"
                " WHERE f.owner = o.id AND f.ended_at IS NULL)"
            )
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
