"""The embedded default store: limits in a SQLite file, shared by every process on a host.

Each operation is one ``BEGIN IMMEDIATE`` transaction on the process's single
connection. Durability is ``synchronous=NORMAL`` in WAL mode: a power cut may
lose the last transactions, which is harmless here because leases and queues
describe live processes and rebuild themselves from them.

Fair write access: SQLite's own busy handler sleeps and retries, and under
contention it starves writers. Every write transaction therefore first takes
an exclusive OS lock on ``<db>.sluice/write.lock`` (threads of one process
queue on a mutex before that), so writers block in the kernel and are woken
when the lock frees, with no sleeping and no retry loop.

Stalls: every step is bounded by the store's step deadline (``SLUICE_STEP_TIMEOUT``),
reads (``get``, ``list``, ``inspect``) are WAL read transactions that take no write
lock and write nothing, and a stall of the write lock (a process paused inside a
transaction) costs no live holder its lease: see :mod:`sluice.store.sqlite.stall`.

The decision logic (grant, queue, hand-off, reclaim) lives in
:mod:`sluice.store.sqlite.engine`, shared with the in-process memory store;
cross-process machinery (process liveness, wake-up sockets, exit watches) in
:mod:`sluice.store.sqlite.ipc`.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager

from sluice import _fork
from sluice.errors import (
    LimitBusy,
    LimitExists,
    LimitNotFound,
    StoreError,
    StoreUnavailable,
)
from sluice.limits.model import Limit, LimitChanges
from sluice.store.audit import definition, limit_changes
from sluice.store.base import (
    Exchange,
    Exchanged,
    HeldSpan,
    Renewal,
    StoreDiagnosis,
    WakeHandler,
)
from sluice.store.deadline import Deadline, overdue, step_timeout
from sluice.store.sqlite import audit, stall
from sluice.store.sqlite import ipc as sqlite_ipc
from sluice.store.sqlite.exchange import Exchanger
from sluice.store.sqlite.ipc import ProcessInfo
from sluice.store.sqlite.reads import Reads
from sluice.store.sqlite.schema import SCHEMA_VERSION, create_schema, diagnose_file
from sluice.store.sqlite.tx import LIMIT_COLUMNS, LimitRow, Tx, chunks, marks

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "from_url"]


class SQLiteStore(Reads, Exchanger, audit.AdminLog):
    """Limits, leases and FIFO queues in SQLite tables; one transaction per operation."""

    safety_interval = sqlite_ipc.SAFETY_INTERVAL

    def __init__(self, url: str, path: str) -> None:
        self.url = url
        self.path = path
        self._mutex = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._read_mutex = threading.Lock()
        self._read_conn: sqlite3.Connection | None = None
        self._register_lock = threading.Lock()
        self._handler: WakeHandler | None = None
        self._closed = False
        self._process: ProcessInfo | None = None
        self._host = socket.gethostname()
        self._addresses: dict[str, str] = {}  # process id -> wake-up socket address
        self.step_timeout = step_timeout()
        """Seconds one step may take, waiting for the write lock included."""
        _fork.track(self, SQLiteStore._after_fork)

    # ------------------------------------------------------------- hooks
    # Overridden by the memory store; the SQLite versions work across processes.

    def _connect(self) -> sqlite3.Connection:
        sqlite_ipc.prepare_files(self.path)
        conn = sqlite3.connect(
            self.path, timeout=stall.BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        # Small pages: each step writes a few short rows, and WAL frames are whole pages.
        # (Takes effect only when the file is created.)
        conn.execute("PRAGMA page_size=1024")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        self._ipc = sqlite_ipc.ProcessLink(self.path, self._wake_local)
        return conn

    def _begin(self, conn: sqlite3.Connection, deadline: Deadline) -> None:
        """Take the write lock and begin a write transaction within the deadline."""
        stall.begin_write(conn, self._ipc.write_lock(), self.path, deadline, self.url)

    def _end_write(self) -> None:
        """Let the write lock go, once the transaction is over."""
        self._ipc.write_lock().release()

    def _credit(self, tx: Tx, waited: float) -> bool:
        """Credit a stall under way (see :mod:`~sluice.store.sqlite.stall`); True if its
        mark goes once this step commits."""
        return stall.credit_stall(tx, self.path, waited)

    def _credited(self) -> None:
        stall.stall_credited(self.path)

    def _stall_began(self) -> float | None:
        return stall.stall_began(self.path)

    def _gone_now(self, process_id: str, host: str) -> bool:
        """Whether a process is known gone, for a read (changes nothing)."""
        return host == self._host and sqlite_ipc.process_gone(self.path, process_id)

    def stalled(self) -> bool:
        """Whether the write lock is stalled for every process (a writer marked it after
        the last commit): the next write step credits the stall to every live lease, so
        a renewal that failed meanwhile costs its lease nothing."""
        return self._stall_began() is not None

    def _register(self, tx: Tx) -> ProcessInfo:
        info, wake_addr = self._ipc.start()
        tx.run(
            "INSERT OR REPLACE INTO sluice_processes (id, pid, host, wake_addr, started_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (info.id, info.pid, info.host, wake_addr, tx.now),
        )
        return info

    def _dead_processes(self, tx: Tx, process_ids: Collection[str]) -> set[str]:
        rows = tx.all(
            f"SELECT id, host FROM sluice_processes WHERE id IN ({marks(len(process_ids))})",
            list(process_ids),
        )
        known = {str(r[0]): str(r[1]) for r in rows}
        dead = set()
        for pid_ in process_ids:
            host = known.get(pid_)
            if host is None:
                dead.add(pid_)  # registered processes always have a row; none means gone
            elif host == self._host and not self._ipc.is_alive(pid_):
                dead.add(pid_)
        return dead

    def _gone(self, process_id: str, host: str) -> bool:
        """Whether a registered process is known to be gone (only this host's can be)."""
        return host == self._host and not self._ipc.is_alive(process_id)

    def _watch(self, ticket_id: str, pids: Collection[int]) -> None:
        self._ipc.watch(ticket_id, pids)

    def _unwatch(self, ticket_id: str) -> None:
        self._ipc.unwatch(ticket_id)

    def _deliver(self, tx: Tx, wakes: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
        """Resolve wake targets to socket addresses (fixed for a process's life: cached)."""
        unknown = [p for p in wakes if p not in self._addresses]
        if unknown:
            for process_id, addr in tx.all(
                f"SELECT id, wake_addr FROM sluice_processes WHERE id IN ({marks(len(unknown))})",
                unknown,
            ):
                self._addresses[process_id] = addr
        return [(self._addresses[p], t) for p, t in wakes.items() if p in self._addresses]

    def _send(self, targets: list[tuple[str, list[str]]]) -> None:
        self._ipc.send(targets)

    def _close_ipc(self) -> None:
        if self._conn is not None:
            self._ipc.close()

    # ------------------------------------------------------------- plumbing

    def _after_fork(self) -> None:
        # A forked child shares nothing with its parent's connection or identity. The
        # inherited connection is kept, unused and unclosed: closing it could disturb
        # the parent's SQLite locks.
        _fork.keep_unclosed(self._conn, self._read_conn)
        self._mutex = threading.Lock()
        self._read_mutex = threading.Lock()
        self._register_lock = threading.Lock()
        self._conn = None
        self._read_conn = None
        self._process = None

    def _connection(self, deadline: Deadline) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"store {self.url} is closed")
        if self._conn is None:
            try:
                conn = self._connect()
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot open SQLite store {self.url}: {exc.strerror or exc} "
                    f"({exc.filename or self.path}); check the path and its permissions"
                ) from exc
            self._conn = conn
            self._begin(conn, deadline)
            try:
                create_schema(conn, self.url)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                self._end_write()
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[Tx]:
        """One write step: the write lock and a transaction, within the step deadline."""
        targets: list[tuple[str, list[str]]] = []
        local: list[str] = []
        deadline = Deadline(self.step_timeout)
        credited = False
        try:
            if not self._mutex.acquire(timeout=deadline.left()):
                raise overdue(self.url, deadline.seconds, "waiting for this process's steps")
            try:
                conn = self._connection(deadline)
                self._begin(conn, deadline)
                try:
                    tx = Tx(conn, time.time())
                    credited = self._credit(tx, deadline.seconds - deadline.left())
                    yield tx
                    if tx.touched or tx.moved:
                        self._hand_off(tx)
                    if tx.wake_tickets:
                        targets, local = self._wake_targets(tx)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:  # SQLite may have rolled back already
                        conn.execute("ROLLBACK")
                    raise
                finally:
                    self._end_write()
            finally:
                self._mutex.release()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.url} failed: {exc}") from exc
        if credited:
            self._credited()
        if targets:
            self._send(targets)
        if local:
            self._wake_local(local)

    def _wake_local(self, ticket_ids: Collection[str]) -> None:
        handler = self._handler
        if handler is not None:
            handler(ticket_ids)

    def _me(self) -> ProcessInfo:
        """This process's identity, registered in its own transaction on first use."""
        if self._process is None:
            with self._register_lock:
                if self._process is None:
                    with self._tx() as tx:
                        info = self._register(tx)
                    self._process = info  # once the row is committed: others trust the row
        assert self._process is not None
        return self._process

    # ------------------------------------------------------------- admin

    def now(self) -> float:
        return time.time()

    def create_limit(self, limit: Limit) -> Limit:
        with self._tx() as tx:
            if tx.one("SELECT 1 FROM sluice_limits WHERE name = ?", (limit.name,)):
                raise LimitExists(limit.name)
            self._insert_limit(tx, limit)
        return limit

    def ensure_limit(self, limit: Limit) -> Limit:
        with self._tx() as tx:
            row = tx.one(f"SELECT {LIMIT_COLUMNS} FROM sluice_limits WHERE name = ?", (limit.name,))
            if row is not None:
                return LimitRow(*row).to_limit()
            self._insert_limit(tx, limit)
        return limit

    def _insert_limit(self, tx: Tx, limit: Limit) -> None:
        limit_id = tx.conn.execute(
            "INSERT INTO sluice_limits (name, slots, rate, burst, active, lease_ttl, tat,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
            (
                limit.name,
                limit.slots,
                limit.rate,
                limit.burst,
                int(limit.active),
                limit.lease_ttl,
                tx.now,
                tx.now,
            ),
        ).lastrowid
        if limit.active and limit_id is not None:
            self._join_waiters(tx, limit_id, limit.name)

    def get_limit(self, name: str) -> Limit:
        rows = self._read(f"SELECT {LIMIT_COLUMNS} FROM sluice_limits WHERE name = ?", (name,))
        if not rows:
            raise LimitNotFound([name])
        return LimitRow(*rows[0]).to_limit()

    def list_limits(self) -> list[Limit]:
        rows = self._read(f"SELECT {LIMIT_COLUMNS} FROM sluice_limits ORDER BY name")
        return [LimitRow(*r).to_limit() for r in rows]

    def update_limit(self, name: str, changes: LimitChanges) -> Limit:
        with self._tx() as tx:
            row = self._limit_row(tx, name)
            old = row.to_limit()
            new = changes.apply(old)
            tx.run(
                "UPDATE sluice_limits SET slots = ?, rate = ?, burst = ?, lease_ttl = ?,"
                " tat = CASE WHEN ? THEN 0 ELSE tat END, updated_at = ? WHERE id = ?",
                (
                    new.slots,
                    new.rate,
                    new.burst,
                    new.lease_ttl,
                    int(changes.touches_rate()),
                    tx.now,
                    row.id,
                ),
            )
            tx.touched.add(row.id)
            tx.moved.add(row.id)  # its head may now be served, or wait for another token
            audit.record(tx, row.name, "update", limit_changes(old, new))
        return new

    def set_active(self, name: str, active: bool) -> Limit:
        with self._tx() as tx:
            row = self._limit_row(tx, name)
            tx.run(
                "UPDATE sluice_limits SET active = ?, updated_at = ? WHERE id = ?",
                (int(active), tx.now, row.id),
            )
            if active and not row.active:
                self._join_waiters(tx, row.id, row.name)
            tx.touched.add(row.id)
            tx.moved.add(row.id)
            after = row._replace(active=int(active)).to_limit()
            action = "enable" if active else "disable"
            audit.record(tx, row.name, action, limit_changes(row.to_limit(), after))
            return after

    def reset_limit(self, name: str) -> int:
        with self._tx() as tx:
            row = self._limit_row(tx, name)
            leases = self._lease_ids_on(tx, row.id)
            self._tell_revoked(tx, row.id)
            self._revoke(tx, leases)
            tx.run(
                "UPDATE sluice_limits SET tat = 0, updated_at = ? WHERE id = ?", (tx.now, row.id)
            )
            tx.touched.add(row.id)
            tx.moved.add(row.id)
            audit.record(tx, row.name, "reset", {"revoked": len(leases)})
            return len(leases)

    def delete_limit(self, name: str, force: bool = False) -> None:
        with self._tx() as tx:
            row = self._limit_row(tx, name)
            self._reclaim(tx, [row.id])
            leases = self._lease_ids_on(tx, row.id)
            if leases and not force:
                raise LimitBusy(name, len(leases))
            self._tell_revoked(tx, row.id)
            self._revoke(tx, leases)
            tx.touched.discard(row.id)
            # Its waiters' tickets are withdrawn and they are woken to look again:
            # they get LimitNotFound, or (missing="ignore") queue anew without it.
            for ticket_id, process_id in tx.all(
                "SELECT t.id, t.process_id FROM sluice_queue q"
                " JOIN sluice_tickets t ON t.id = q.ticket_id WHERE q.limit_id = ?",
                (row.id,),
            ):
                tx.wake_tickets[ticket_id] = process_id
                self._drop_ticket(tx, ticket_id)
            tx.run("DELETE FROM sluice_limits WHERE id = ?", (row.id,))
            audit.record(
                tx, row.name, "delete", {"force": force, "limit": definition(row.to_limit())}
            )

    def _tell_revoked(self, tx: Tx, limit_id: int) -> None:
        """Wake the process of each lease holding the limit with the lease's id: revoked by
        this step, its holder learns it at once instead of at its next renewal."""
        for lease_id, process_id in tx.all(
            "SELECT l.id, l.process_id FROM sluice_holdings h"
            " JOIN sluice_leases l ON l.id = h.lease_id WHERE h.limit_id = ?",
            (limit_id,),
        ):
            tx.wake_tickets[str(lease_id)] = str(process_id)

    # ------------------------------------------------------------- the hot path

    def held_spans(self, names: Sequence[str], since: float, until: float) -> list[HeldSpan]:
        wanted = sorted(set(names))
        if not wanted:
            return []
        qs = ", ".join("?" for _ in wanted)
        rows = self._read(
            "SELECT l.name, h.holder, h.units, h.acquired_at, h.released_at, h.lease_id"
            " FROM sluice_held h JOIN sluice_limits l ON l.id = h.limit_id"
            f" WHERE l.name IN ({qs}) AND h.released_at >= ? AND h.acquired_at <= ?"
            " UNION ALL"
            " SELECT l.name, s.holder, h.units, s.acquired_at, NULL, s.id"
            " FROM sluice_holdings h JOIN sluice_limits l ON l.id = h.limit_id"
            " JOIN sluice_leases s ON s.id = h.lease_id"
            f" WHERE l.name IN ({qs}) AND s.claimed = 1 AND s.acquired_at <= ?"
            " ORDER BY 4",
            (*wanted, since, until, *wanted, until),
        )
        return [
            HeldSpan(
                str(r[0]),
                str(r[1]),
                int(r[2]),
                float(r[3]),
                None if r[4] is None else float(r[4]),
                str(r[5]),
            )
            for r in rows
        ]

    def exchange(self, batch: Exchange) -> Exchanged:
        me = self._me()
        with self._tx() as tx:
            return self._exchange(tx, me, batch)

    def renew(self, lease_ids: Sequence[str], ticket_ids: Sequence[str]) -> Renewal:
        lost_leases: list[str] = []
        lost_tickets: list[str] = []
        expires: dict[str, float] = {}
        with self._tx() as tx:
            for table, ids, lost in (
                ("sluice_leases", lease_ids, lost_leases),
                ("sluice_tickets", ticket_ids, lost_tickets),
            ):
                for chunk in chunks(list(ids)):
                    rows = tx.all(
                        f"SELECT id, expires_at, lease_ttl FROM {table}"
                        f" WHERE id IN ({marks(len(chunk))})",
                        chunk,
                    )
                    live = {str(r[0]): tx.now + float(r[2]) for r in rows if float(r[1]) > tx.now}
                    lost.extend(i for i in chunk if i not in live)
                    tx.conn.executemany(
                        f"UPDATE {table} SET expires_at = ? WHERE id = ?",
                        [(exp, i) for i, exp in live.items()],
                    )
                    if table == "sluice_leases":
                        expires.update(live)
                    else:  # a ticket whose process shows life is served again
                        tx.conn.executemany(
                            "UPDATE sluice_queue SET stalled = 0 WHERE ticket_id = ? AND stalled",
                            [(i,) for i in live],
                        )
            # Expired but not yet reclaimed is lost too, and final: reclaim it now.
            self._revoke(tx, lost_leases, expired=True)
            for ticket_id in lost_tickets:
                self._drop_ticket(tx, ticket_id)
        return Renewal(frozenset(lost_leases), frozenset(lost_tickets), expires)

    # ------------------------------------------------------------- diagnosis

    def diagnose(self) -> StoreDiagnosis:
        """Read the schema version and expired leases on a private, query-only connection."""
        return diagnose_file(self.url, self.path)

    # ------------------------------------------------------------- lifecycle

    @property
    def closed(self) -> bool:
        """Whether close() has been called."""
        return self._closed

    def set_wake_handler(self, handler: WakeHandler) -> None:
        self._handler = handler

    def close(self) -> None:
        """Withdraw this process's leases and tickets, then close the connection."""
        if self._closed:
            return
        if self._conn is not None:
            if self._process is not None:
                try:
                    with self._tx() as tx:
                        self._forget_process(tx, self._process.id, died=False)
                except StoreError:
                    pass
            self._close_ipc()
            self._conn.close()
            if self._read_conn is not None:
                self._read_conn.close()
        self._closed = True
        self._conn = None


def from_url(url: str) -> SQLiteStore:
    """Open the store of a canonical ``sqlite:////absolute/path.db`` URL."""
    return SQLiteStore(url, url[len("sqlite:///") :])
