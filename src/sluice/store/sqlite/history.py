"""Run history in SQLite: the same database file as the limits, in its own tables.

The tables (``sluice_history_*``) are created on first use by this module's own
connection, and migrated in place from older layouts (``sluice_history_meta`` holds
the version; a database from before it is version 1); the limits tables and their
schema version are never touched. Writes take the database's writer lock file
(``<db>.sluice/write.lock``), the one the limits store takes, so a history batch
queues fairly with limit steps instead of making them sleep in SQLite's busy
handler. Reads never wait (WAL).

A process writing flow runs holds an exclusive ``flock`` on its own lock file,
``<db>.sluice/runs/<owner>.lock``, for as long as it lives: a reader that can take it
knows the process is gone (the kernel drops the lock however it dies), so its runs
end Crashed at the next read (see :mod:`sluice.store.history`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from sluice import _fork
from sluice.errors import ConfigError, RunNotFound, StoreError
from sluice.settings import history_heartbeat
from sluice.store.history import (
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
from sluice.store.sqlite.history_schema import create_or_migrate, history_version
from sluice.store.sqlite.ipc import FileLock, lock_free, side_dir, write_lock_path

__all__ = ["SQLiteHistory", "from_url"]

log = logging.getLogger("sluice.store.sqlite")


def _bulk(verb: str, table: str, columns: str) -> str:
    """One statement inserting every row of a JSON array of rows (arrays of columns)."""
    names = [c.strip() for c in columns.split(",")]
    values = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(names)))
    return f"{verb} INTO sluice_history_{table} ({columns}) SELECT {values} FROM json_each(?)"


_BUSY_WAIT = 2.0
"""Seconds a reader tries to take the write lock to end a dead process's runs."""


class _Busy(Exception):
    """Another process holds the write lock: a best-effort write is left for later."""


class SQLiteHistory:
    """Flow runs, task runs, states and logs in ``sluice_history_*`` tables of a SQLite file."""

    def __init__(self, url: str, path: str) -> None:
        self.url = url
        self.path = path
        self._mutex = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._file_lock: FileLock | None = None
        self._closed = False
        self._new_owner()
        _fork.track(self, SQLiteHistory._after_fork)

    # ------------------------------------------------------------- plumbing

    def _new_owner(self) -> None:
        self._owner = new_owner_id()
        self._owner_fd: int | None = None  # this process's liveness lock, once it owns runs
        self._registered = False
        self._beat_at = 0.0  # time.monotonic() of this handle's last heartbeat

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
        # A forked child opens its own connection; the parent's stays unclosed. It is a
        # new owner: the parent's liveness lock is closed here (not unlocked), so a
        # child never keeps a dead parent's runs looking alive.
        _fork.keep_unclosed(self._conn, self._file_lock)
        if self._owner_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._owner_fd)
        self._mutex = threading.Lock()
        self._conn, self._file_lock = None, None
        self._new_owner()

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"run history on {self.url} is closed")
        if self._conn is None:
            conn = self._connect()
            try:
                if history_version(conn) != HISTORY_VERSION:
                    with self._write_lock():
                        conn.execute("BEGIN IMMEDIATE")
                        try:
                            create_or_migrate(conn, self.url)
                            conn.execute("COMMIT")
                        except BaseException:
                            conn.execute("ROLLBACK")
                            raise
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    @contextlib.contextmanager
    def _tx(self, wait: bool = True) -> Iterator[sqlite3.Connection]:
        try:
            with self._mutex:
                conn = self._connection()
                with self._write_lock() if wait else self._lock_now():
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

    @contextlib.contextmanager
    def _lock_now(self) -> Iterator[None]:
        """The write lock within :data:`_BUSY_WAIT` seconds, else _Busy.

        A best-effort write by a reader must not wait without bound: a writer paused
        inside its transaction (SIGSTOP) keeps the lock. flock has no timed wait, so
        this tries again every few milliseconds; only readers that found a dead
        process's runs come here.
        """
        lock = self._write_lock()
        if not isinstance(lock, FileLock):
            yield
            return
        give_up = time.monotonic() + _BUSY_WAIT
        while True:
            try:
                fcntl.flock(lock.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= give_up:
                    raise _Busy from None
                time.sleep(0.005)
        try:
            yield
        finally:
            fcntl.flock(lock.fd, fcntl.LOCK_UN)

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        try:
            with self._mutex:
                return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"run history on {self.url} failed: {exc}") from exc

    # ------------------------------------------------------------- owners

    @property
    def _local(self) -> bool:
        """Whether the history lives in this process only (memory://): no other owner."""
        return self.path == ":memory:"

    def _liveness_path(self, owner: str) -> Path:
        return side_dir(self.path) / "runs" / f"{owner}.lock"

    def _hold_liveness(self) -> None:
        """Take this process's liveness lock, before any run of its own is written."""
        if self._owner_fd is not None or self._local:
            return
        path = self._liveness_path(self._owner)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._owner_fd = fd

    def _gone(self, owner: str) -> bool:
        """Whether the owner's process no longer holds its liveness lock."""
        return owner != self._owner and lock_free(self._liveness_path(owner))

    def _beat_due(self) -> bool:
        """Whether a write that opens runs must renew the heartbeat too (none for a while)."""
        return not self._registered or time.monotonic() - self._beat_at >= history_heartbeat()

    def _beat(self, conn: sqlite3.Connection) -> None:
        me = Owner.mine(self._owner)
        self._beat_at = time.monotonic()
        conn.execute(
            "INSERT OR REPLACE INTO sluice_history_owners (id, host, pid, beat_at, every)"
            " VALUES (?, ?, ?, ?, ?)",
            (me.id, me.host, me.pid, me.beat_at, me.every),
        )

    def _reap(self) -> None:
        """End the runs of owners that are gone as Crashed; best effort, never fails a read."""
        if self._local:
            return
        try:
            self._reap_now()
        except _Busy:
            pass  # a writer holds the store (paused?): a later read ends those runs
        except StoreError as exc:
            log.warning("sluice: could not end the runs of a dead process: %s", exc)

    def _reap_now(self) -> None:
        open_runs = self._read(
            "SELECT f.id, f.owner, o.host, o.pid, o.beat_at, o.every"
            " FROM sluice_history_flow_runs f"
            " LEFT JOIN sluice_history_owners o ON o.id = f.owner"
            " WHERE f.ended_at IS NULL AND f.owner != ''"
        )
        verdicts: dict[str, bool] = {}
        doomed: list[tuple[str, Owner]] = []
        for run_id, owner_id, host, pid, beat_at, every in open_runs:
            if owner_id not in verdicts:
                verdicts[owner_id] = self._gone(owner_id)
            if verdicts[owner_id]:
                doomed.append(
                    (run_id, Owner(owner_id, host or "", pid or 0, beat_at, every or 0.0))
                )
        if not doomed:
            return
        seen_gone = time.time()
        records: list[HistoryRecord] = []
        for run_id, owner in doomed:
            detail = self._detail(run_id)
            records += crash_records(detail, owner, seen_gone, "died")
        ids = [run_id for run_id, _ in doomed]
        owners = sorted({owner.id for _, owner in doomed})
        with self._tx(wait=False) as conn:
            marks = ", ".join("?" * len(ids))
            still_open = {
                r[0]
                for r in conn.execute(
                    f"SELECT id FROM sluice_history_flow_runs WHERE id IN ({marks})"
                    " AND ended_at IS NULL",
                    ids,
                )
            }
            self._write_rows(conn, rows_of([r for r in records if _flow_of(r) in still_open]))
            conn.execute(
                f"DELETE FROM sluice_history_owners WHERE id IN ({', '.join('?' * len(owners))})",
                owners,
            )
        for owner_id in owners:
            with contextlib.suppress(OSError):
                self._liveness_path(owner_id).unlink()

    # ------------------------------------------------------------- the protocol

    def write(self, batch: Sequence[HistoryRecord]) -> None:
        """Upsert runs and insert states and logs, in one transaction.

        Each table gets ONE statement whatever the batch's size (its rows travel as one
        JSON array): the sqlite3 module releases and takes back the GIL around every
        step, so row-by-row inserts from a busy process would hold the database's write
        lock for as long as the other threads keep the GIL.
        """
        rows = rows_of(batch, self._owner)
        if not rows:
            return
        if rows.open_flows:
            self._hold_liveness()
        statements = _statements(rows)  # encoded before the write lock is taken
        with self._tx() as conn:
            _write_statements(conn, statements)
            if rows.open_flows and self._beat_due():
                self._beat(conn)
                self._registered = True

    def _write_rows(self, conn: sqlite3.Connection, rows: Rows) -> None:
        _write_statements(conn, _statements(rows))

    def heartbeat(self) -> bool:
        """Renew this process's heartbeat; False if its runs were ended as Crashed."""
        if self._local:
            return True
        self._hold_liveness()
        with self._tx() as conn:
            known = conn.execute(
                "SELECT 1 FROM sluice_history_owners WHERE id = ?", (self._owner,)
            ).fetchone()
            self._beat(conn)
        lost = self._registered and known is None
        self._registered = True
        return not lost

    def list_flow_runs(self, limit: int = 20) -> list[FlowRunRecord]:
        """The newest flow runs first."""
        check_list_limit(limit)
        self._reap()
        rows = self._read(
            f"SELECT {FLOW_COLUMNS} FROM sluice_history_flow_runs"
            " ORDER BY created_at DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [flow_record(r) for r in rows]

    def get_flow_run(self, run_id: str) -> FlowRunDetail:
        """One flow run with its states and task runs."""
        check_run_id(run_id)
        self._reap()
        return self._detail(run_id)

    def _detail(self, run_id: str) -> FlowRunDetail:
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

    def get_logs(self, run_id: str) -> list[RunLogRecord]:
        """A flow run's log records in order."""
        check_run_id(run_id)
        if not self._read("SELECT 1 FROM sluice_history_flow_runs WHERE id = ?", (run_id,)):
            raise RunNotFound(run_id)
        rows = self._read(
            f"SELECT {LOG_COLUMNS} FROM sluice_history_logs WHERE flow_run_id = ? ORDER BY seq",
            (run_id,),
        )
        return [log_record(r) for r in rows]

    def prune(self, keep_runs: int, max_age_seconds: float | None = None) -> int:
        """Delete old ended flow runs with their task runs, states and logs."""
        keep_runs, max_age_seconds = check_prune(keep_runs, max_age_seconds)
        self._reap()
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
                for table, column in (
                    ("states", "flow_run_id"),
                    ("logs", "flow_run_id"),
                    ("task_runs", "flow_run_id"),
                    ("flow_runs", "id"),
                ):
                    conn.execute(
                        f"DELETE FROM sluice_history_{table} WHERE {column} IN ({marks})", chunk
                    )
            idle = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM sluice_history_owners WHERE id NOT IN ("
                    " SELECT owner FROM sluice_history_flow_runs WHERE ended_at IS NULL)"
                )
            ]
            gone = [owner for owner in idle if not self._local and self._gone(owner)]
            for owner in gone:
                conn.execute("DELETE FROM sluice_history_owners WHERE id = ?", (owner,))
        for owner in gone:
            with contextlib.suppress(OSError):
                self._liveness_path(owner).unlink()
        return len(ids)

    def close(self) -> None:
        """Close the connection and the lock files."""
        with self._mutex:
            self._closed = True
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
            self._conn = None
            if self._file_lock is not None:
                self._file_lock.close()
                self._file_lock = None
            if self._owner_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._owner_fd)
                self._owner_fd = None


def _flow_of(record: HistoryRecord) -> str:
    return record.id if isinstance(record, FlowRunRecord) else record.flow_run_id


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


def _statements(rows: Rows) -> list[tuple[str, str]]:
    """The bulk statements that write ``rows``, each with its rows as one JSON array."""
    statements = []
    if rows.flows:
        flows = json.dumps(list(rows.flows.values()))
        statements.append((_bulk("INSERT OR REPLACE", "flow_runs", FLOW_WRITE_COLUMNS), flows))
    if rows.tasks:
        tasks = json.dumps(list(rows.tasks.values()))
        statements.append((_bulk("INSERT OR REPLACE", "task_runs", TASK_COLUMNS), tasks))
    if rows.states:
        states = json.dumps(rows.states)
        statements.append((_bulk("INSERT OR IGNORE", "states", STATE_COLUMNS), states))
    if rows.logs:
        statements.append((_bulk("INSERT OR IGNORE", "logs", LOG_COLUMNS), json.dumps(rows.logs)))
    return statements


def _write_statements(conn: sqlite3.Connection, statements: list[tuple[str, str]]) -> None:
    """Run :func:`_statements` in the open transaction."""
    for sql, payload in statements:
        conn.execute(sql, (payload,))
