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

Cross-process machinery (process liveness, wake-up sockets, exit watches)
lives in :mod:`sluice.store.sqlite_ipc`; the decision logic is here, once, and
also serves the in-process memory store.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NamedTuple

from sluice.errors import (
    InvalidRequest,
    LimitBusy,
    LimitExists,
    LimitNotFound,
    StoreError,
    StoreUnavailable,
)
from sluice.limits import gcra
from sluice.limits.model import (
    DEFAULT_LEASE_TTL,
    AcquireRequest,
    Granted,
    Holder,
    Kind,
    Limit,
    LimitChanges,
    LimitStatus,
    Queued,
    Renewal,
    Waiter,
    utc,
)
from sluice.store import sqlite_ipc
from sluice.store.base import WakeHandler
from sluice.store.sqlite_ipc import ProcessInfo

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

SCHEMA_VERSION = 1
_HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
_forked_leftovers: list[object] = []
_CHUNK = 400  # stay well under SQLite's bound-parameter limit
_MAX_WAKE = 256  # most tickets one change wakes per limit


class _PendingRelease:
    """A release waiting to be done in a batch, and its outcome."""

    __slots__ = ("done", "found", "lease_id")

    def __init__(self, lease_id: str) -> None:
        self.lease_id = lease_id
        self.done = False
        self.found = False


class _Claim(NamedTuple):
    """A request as its lease will record it: whose it is and what it takes."""

    id: str
    process_id: str
    holder: str
    host: str
    pid: int
    occupy: int
    kind: Kind


class _LimitRow(NamedTuple):
    id: int
    name: str
    slots: int | None
    rate: float | None
    burst: int | None
    active: int
    lease_ttl: float
    tat: float
    head_seq: int | None = None  # filled in by _limit_rows only
    in_use: int = 0

    def to_limit(self) -> Limit:
        return Limit(
            self.name, self.slots, self.rate, self.burst, bool(self.active), self.lease_ttl
        )


_LIMIT_COLUMNS = "id, name, slots, rate, burst, active, lease_ttl, tat"
_PREFIXED_COLUMNS = ", ".join(f"l.{c}" for c in _LIMIT_COLUMNS.split(", "))


@dataclass
class _Tx:
    """One open transaction: its cursor, its clock reading and the limits it touched."""

    conn: sqlite3.Connection
    now: float
    touched: set[int] = field(default_factory=set)  # limits whose capacity or queue changed
    moved: set[int] = field(default_factory=set)  # limits whose queue head may have changed
    wake_tickets: dict[str, str] = field(default_factory=dict)  # ticket -> process to wake
    alive: set[str] = field(default_factory=set)  # processes found alive in this step

    def one(self, sql: str, params: Sequence[object] = ()) -> Any:
        """The first row of a query (a tuple), or None."""
        return self.conn.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        """Every row of a query, as tuples."""
        return self.conn.execute(sql, params).fetchall()

    def run(self, sql: str, params: Sequence[object] = ()) -> int:
        return self.conn.execute(sql, params).rowcount


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _ids(text: object) -> list[int]:
    return [int(part) for part in str(text).split(",") if part]


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class SQLiteStore:
    """Limits, leases and FIFO queues in SQLite tables; one transaction per operation."""

    safety_interval = 10.0

    def __init__(self, url: str, path: str) -> None:
        self.url = url
        self.path = path
        self._mutex = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._read_mutex = threading.Lock()
        self._read_conn: sqlite3.Connection | None = None
        self._register_lock = threading.Lock()
        self._release_gate = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: list[_PendingRelease] = []
        self._handler: WakeHandler | None = None
        self._closed = False
        self._process: ProcessInfo | None = None
        self._pid = os.getpid()
        self._host = socket.gethostname()
        self._addresses: dict[str, str] = {}  # process id -> wake-up socket address

    # ------------------------------------------------------------- hooks
    # Overridden by the memory store; the SQLite versions work across processes.

    def _connect(self) -> sqlite3.Connection:
        sqlite_ipc.prepare_files(self.path)
        conn = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        # Small pages: each step writes a few short rows, and WAL frames are whole pages.
        # (Takes effect only when the file is created.)
        conn.execute("PRAGMA page_size=1024")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        self._ipc = sqlite_ipc.ProcessLink(self.path, self._wake_local)
        self.safety_interval = self._ipc.safety_interval
        return conn

    def _write_lock(self) -> AbstractContextManager[object]:
        return self._ipc.write_lock()

    def _reader(self) -> tuple[threading.Lock, sqlite3.Connection]:
        """A second connection, for reads that must not queue behind this process's writer
        (WAL readers never wait for writers)."""
        if self._pid != os.getpid():
            self._after_fork()
        if self._read_conn is None:
            with self._mutex:
                self._connection()  # the file and schema exist first
            with self._read_mutex:
                if self._read_conn is None:
                    self._read_conn = sqlite3.connect(
                        self.path, timeout=30.0, isolation_level=None, check_same_thread=False
                    )
        return self._read_mutex, self._read_conn

    def _register(self, tx: _Tx) -> ProcessInfo:
        info, wake_addr = self._ipc.start()
        tx.run(
            "INSERT OR REPLACE INTO sluice_processes (id, pid, host, wake_addr, started_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (info.id, info.pid, info.host, wake_addr, tx.now),
        )
        return info

    def _dead_processes(self, tx: _Tx, process_ids: Collection[str]) -> set[str]:
        rows = tx.all(
            f"SELECT id, host FROM sluice_processes WHERE id IN ({_marks(len(process_ids))})",
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

    def _deliver(self, tx: _Tx, wakes: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
        """Resolve wake targets to socket addresses (fixed for a process's life: cached)."""
        unknown = [p for p in wakes if p not in self._addresses]
        if unknown:
            for process_id, addr in tx.all(
                f"SELECT id, wake_addr FROM sluice_processes WHERE id IN ({_marks(len(unknown))})",
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
        _forked_leftovers.extend((self._conn, self._read_conn))
        self._mutex = threading.Lock()
        self._read_mutex = threading.Lock()
        self._register_lock = threading.Lock()
        self._release_gate = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending = []
        self._conn = None
        self._read_conn = None
        self._process = None
        self._pid = os.getpid()

    def _connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self._after_fork()
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
            with self._write_lock():
                conn.execute("BEGIN IMMEDIATE")
                try:
                    self._create_schema(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        return self._conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        row = conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='sluice_meta'"
        ).fetchone()
        if row is not None:
            version = conn.execute(
                "SELECT value FROM sluice_meta WHERE key='schema_version'"
            ).fetchone()
            if version is not None and int(version[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.url} has schema version {version[0]}, newer than this "
                    f"Sluice understands ({SCHEMA_VERSION}); upgrade Sluice"
                )
            if version is not None and int(version[0]) == SCHEMA_VERSION:
                return
        script = resources.files("sluice.store").joinpath("sqlite_schema.sql").read_text()
        code = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
        for statement in code.split(";"):
            if statement.strip():
                conn.execute(statement)

    @contextmanager
    def _tx(self) -> Iterator[_Tx]:
        targets: list[tuple[str, list[str]]] = []
        local: list[str] = []
        if self._pid != os.getpid():
            self._after_fork()  # before the mutex: a forked copy of it may be held
        try:
            with self._mutex:
                conn = self._connection()
                with self._write_lock():
                    conn.execute("BEGIN IMMEDIATE")
                    tx = _Tx(conn, time.time())
                    try:
                        yield tx
                        if tx.touched or tx.wake_tickets:
                            targets, local = self._hand_off(tx)
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:  # SQLite may have rolled back already
                            conn.execute("ROLLBACK")
                        raise
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.url} failed: {exc}") from exc
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
        if self._process is None or self._pid != os.getpid():
            if self._pid != os.getpid():
                self._after_fork()
            with self._register_lock:
                if self._process is None:
                    with self._tx() as tx:
                        info = self._register(tx)
                    self._process = info  # once the row is committed: others trust the row
        assert self._process is not None
        return self._process

    # ------------------------------------------------------------- reading

    def _limit_rows(self, tx: _Tx, names: Sequence[str]) -> dict[str, _LimitRow]:
        """The named limits, each with its queue head's seq and units in use."""
        rows = tx.all(
            f"SELECT {_LIMIT_COLUMNS},"
            " (SELECT MIN(seq) FROM sluice_queue q WHERE q.limit_id = l.id),"
            " (SELECT COALESCE(SUM(units), 0) FROM sluice_holdings h WHERE h.limit_id = l.id)"
            f" FROM sluice_limits l WHERE name IN ({_marks(len(names))})",
            names,
        )
        return {str(r[1]): _LimitRow(*r) for r in rows}

    def _limit_row(self, tx: _Tx, name: str) -> _LimitRow:
        row = tx.one(f"SELECT {_LIMIT_COLUMNS} FROM sluice_limits WHERE name = ?", (name,))
        if row is None:
            raise LimitNotFound([name])
        return _LimitRow(*row)

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
            row = tx.one(
                f"SELECT {_LIMIT_COLUMNS} FROM sluice_limits WHERE name = ?", (limit.name,)
            )
            if row is not None:
                return _LimitRow(*row).to_limit()
            self._insert_limit(tx, limit)
        return limit

    def _insert_limit(self, tx: _Tx, limit: Limit) -> None:
        tx.run(
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
        )

    def get_limit(self, name: str) -> Limit:
        rows = self._read(f"SELECT {_LIMIT_COLUMNS} FROM sluice_limits WHERE name = ?", (name,))
        if not rows:
            raise LimitNotFound([name])
        return _LimitRow(*rows[0]).to_limit()

    def list_limits(self) -> list[Limit]:
        rows = self._read(f"SELECT {_LIMIT_COLUMNS} FROM sluice_limits ORDER BY name")
        return [_LimitRow(*r).to_limit() for r in rows]

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        """Rows of one query, read without taking the write lock."""
        try:
            lock, conn = self._reader()
            with lock:
                return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.url} failed: {exc}") from exc

    def update_limit(self, name: str, changes: LimitChanges) -> Limit:
        with self._tx() as tx:
            row = self._limit_row(tx, name)
            new = changes.apply(row.to_limit())
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
        return new

    def set_active(self, name: str, active: bool) -> Limit:
        with self._tx() as tx:
            row = self._limit_row(tx, name)
            tx.run(
                "UPDATE sluice_limits SET active = ?, updated_at = ? WHERE id = ?",
                (int(active), tx.now, row.id),
            )
            tx.touched.add(row.id)
            tx.moved.add(row.id)
            return row._replace(active=int(active)).to_limit()

    def reset_limit(self, name: str) -> int:
        with self._tx() as tx:
            row = self._limit_row(tx, name)
            leases = self._lease_ids_on(tx, row.id)
            self._revoke(tx, leases)
            tx.run(
                "UPDATE sluice_limits SET tat = 0, updated_at = ? WHERE id = ?", (tx.now, row.id)
            )
            tx.touched.add(row.id)
            tx.moved.add(row.id)
            return len(leases)

    def delete_limit(self, name: str, force: bool = False) -> None:
        with self._tx() as tx:
            row = self._limit_row(tx, name)
            self._reclaim(tx, [row.id])
            leases = self._lease_ids_on(tx, row.id)
            if leases and not force:
                raise LimitBusy(name, len(leases))
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

    def inspect_limit(self, name: str) -> LimitStatus:
        with self._tx() as tx:
            row = self._limit_row(tx, name)
            self._reclaim(tx, [row.id])
            holders = [
                Holder(str(r[0]), int(r[1]), str(r[2]), str(r[3]), int(r[4]), utc(r[5]), utc(r[6]))
                for r in tx.all(
                    "SELECT l.id, h.units, l.holder, l.host, l.pid, l.acquired_at, l.expires_at"
                    " FROM sluice_holdings h JOIN sluice_leases l ON l.id = h.lease_id"
                    " WHERE h.limit_id = ? ORDER BY l.acquired_at, l.id",
                    (row.id,),
                )
            ]
            waiters = [
                Waiter(str(r[0]), int(r[1]), str(r[2]), str(r[3]), int(r[4]), utc(r[5]), i + 1)
                for i, r in enumerate(
                    tx.all(
                        "SELECT t.id, q.occupy, t.holder, t.host, t.pid, t.created_at"
                        " FROM sluice_queue q JOIN sluice_tickets t ON t.id = q.ticket_id"
                        " WHERE q.limit_id = ? ORDER BY q.seq",
                        (row.id,),
                    )
                )
            ]
            token_in = None
            if row.rate is not None and row.burst is not None:
                token_in = gcra.next_token_in(row.tat, tx.now, row.rate, row.burst)
            return LimitStatus(
                limit=row.to_limit(),
                in_use=sum(h.occupy for h in holders),
                holders=holders,
                waiters=waiters,
                next_token_in=token_in,
                taken_at=utc(tx.now),
            )

    # ------------------------------------------------------------- acquire

    def acquire(self, request: AcquireRequest) -> Granted | Queued:
        me = self._me()
        if request.seq is not None:
            # A woken waiter most often finds its units already handed over: a read
            # (no write lock; WAL readers never wait) is enough to collect them.
            handed = self._peek_grant(request)
            if handed is not None:
                return handed
        with self._tx() as tx:
            rows = self._limit_rows(tx, request.names)
            missing = tuple(n for n in request.names if n not in rows)
            seq = request.seq
            if seq is not None:  # a retry: perhaps a release already handed us the units
                handed = self._collect(tx, request.request_id, missing)
                if handed is not None:
                    return handed
            if missing and request.missing == "raise":
                raise LimitNotFound(missing)
            active = [r for r in sorted(rows.values(), key=lambda r: r.name) if r.active]
            self._check_request(request, active)
            has_ticket = False
            if seq is not None:  # keep the place the ticket already has
                ticket = tx.one(
                    "SELECT seq FROM sluice_tickets WHERE id = ?", (request.request_id,)
                )
                has_ticket = ticket is not None
                seq = int(ticket[0]) if ticket is not None else seq

            blocked = self._blockers(tx, request.kind, request.occupy, active, seq)
            # Reclaim what is in the way (expired, or of dead processes), unless only
            # other waiters are ahead of a newcomer: those are reclaimed by whoever
            # waits right behind them, woken by their exit or expiry.
            check = seq is not None or any(why != "queue" for _, why in blocked)
            if blocked and check and self._reclaim(tx, [r.id for r in active]):
                # Something expired or died in the way: look again with fresh numbers.
                fresh = self._limit_rows(tx, [r.name for r in active])
                active = [fresh[r.name] for r in active]
                blocked = self._blockers(tx, request.kind, request.occupy, active, seq)
            if not blocked:
                claim = _Claim(
                    request.request_id,
                    me.id,
                    request.holder,
                    me.host,
                    me.pid,
                    request.occupy,
                    request.kind,
                )
                if request.seq is not None and self._drop_ticket(tx, request.request_id):
                    self._unwatch(request.request_id)
                return self._take(tx, claim, active, missing, record_rate=False)
            return self._queue(tx, request, active, missing, me, seq, has_ticket, blocked)

    def _peek_grant(self, request: AcquireRequest) -> Granted | None:
        with self._mutex:
            try:
                row = (
                    self._connection()
                    .execute(
                        "SELECT names, acquired_at, expires_at, lease_ttl FROM sluice_leases"
                        " WHERE id = ? AND kind = 'concurrency'",
                        (request.request_id,),
                    )
                    .fetchone()
                )
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.url} failed: {exc}") from exc
        if row is None:
            return None
        self._unwatch(request.request_id)
        names = tuple(n for n in str(row[0]).split(",") if n)
        # Which names were missing was already said when the request queued.
        return Granted(request.request_id, names, row[1], row[2], row[3])

    def _collect(self, tx: _Tx, request_id: str, missing: tuple[str, ...]) -> Granted | None:
        """The grant a release handed to this request while it slept, if any."""
        row = tx.one(
            "SELECT names, kind, acquired_at, expires_at, lease_ttl FROM sluice_leases"
            " WHERE id = ?",
            (request_id,),
        )
        if row is None:
            return None
        self._unwatch(request_id)
        names = tuple(n for n in str(row[0]).split(",") if n)
        if row[1] == Kind.RATE.value:
            tx.run("DELETE FROM sluice_leases WHERE id = ?", (request_id,))
            return Granted(None, names, float(row[2]), None, None, missing)
        return Granted(request_id, names, float(row[2]), float(row[3]), float(row[4]), missing)

    def _check_request(self, request: AcquireRequest, active: list[_LimitRow]) -> None:
        for row in active:
            if request.kind is Kind.RATE and row.rate is None:
                raise InvalidRequest(
                    f"rate_limit() on limit {row.name!r}, which has no rate; "
                    "give it one with update(rate=...) or use concurrency()"
                )
            bound = row.to_limit().max_occupy(request.kind)
            if bound is not None and request.occupy > bound:
                what = "slots" if bound == row.slots else "burst"
                raise InvalidRequest(
                    f"occupy={request.occupy} can never be met by limit {row.name!r} "
                    f"({what}={bound}); ask for at most {bound}"
                )

    def _blockers(
        self, tx: _Tx, kind: Kind, occupy: int, active: list[_LimitRow], seq: int | None
    ) -> list[tuple[_LimitRow, str]]:
        """Each active limit that refuses the request now, with why: queue, slots or rate."""
        blocked: list[tuple[_LimitRow, str]] = []
        for row in active:
            if row.head_seq is not None and (seq is None or row.head_seq < seq):
                blocked.append((row, "queue"))
            elif (
                kind is Kind.CONCURRENCY
                and row.slots is not None
                and (row.in_use + occupy > row.slots)
            ):
                blocked.append((row, "slots"))
            elif (
                row.rate is not None
                and row.burst is not None
                and gcra.allow_at(row.tat, row.rate, row.burst, occupy) > tx.now
            ):
                blocked.append((row, "rate"))
        return blocked

    def _take(
        self,
        tx: _Tx,
        claim: _Claim,
        active: list[_LimitRow],
        missing: tuple[str, ...],
        record_rate: bool,
    ) -> Granted:
        """Take the claim's tokens and units on every active limit and record its lease.

        A rate grant is recorded only when handed to a sleeping waiter
        (``record_rate``), for it to collect; otherwise it leaves nothing behind.
        """
        for row in active:
            if row.rate is not None and row.burst is not None:
                decision = gcra.decide(row.tat, tx.now, row.rate, row.burst, claim.occupy)
                tx.run("UPDATE sluice_limits SET tat = ? WHERE id = ?", (decision.tat, row.id))
        names = tuple(r.name for r in active)
        if claim.kind is Kind.RATE and not record_rate:
            return Granted(None, names, tx.now, None, None, missing)
        ttl = min((r.lease_ttl for r in active), default=DEFAULT_LEASE_TTL)
        expires = tx.now + ttl
        holdings = []
        if claim.kind is Kind.CONCURRENCY:
            holdings = [(r.id, claim.id, claim.occupy) for r in active if r.slots is not None]
        tx.run(
            "INSERT INTO sluice_leases (id, limit_ids, names, kind, process_id, holder, host, pid,"
            " occupy, lease_ttl, acquired_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                claim.id,
                ",".join(str(h[0]) for h in holdings),
                ",".join(names),
                claim.kind.value,
                claim.process_id,
                claim.holder,
                claim.host,
                claim.pid,
                claim.occupy,
                ttl,
                tx.now,
                expires,
            ),
        )
        for holding in holdings:
            tx.run(
                "INSERT INTO sluice_holdings (limit_id, lease_id, units) VALUES (?, ?, ?)", holding
            )
        if claim.kind is Kind.RATE:
            return Granted(None, names, tx.now, None, None, missing)
        return Granted(claim.id, names, tx.now, expires, ttl, missing)

    def _queue(
        self,
        tx: _Tx,
        request: AcquireRequest,
        active: list[_LimitRow],
        missing: tuple[str, ...],
        me: ProcessInfo,
        seq: int | None,
        has_ticket: bool,
        blocked: list[tuple[_LimitRow, str]],
    ) -> Queued:
        ttl = min(r.lease_ttl for r in active)
        expires = tx.now + ttl
        rows = [(r.id, request.request_id, request.occupy, request.kind.value) for r in active]
        if has_ticket:
            assert seq is not None
            tx.run(
                "UPDATE sluice_tickets SET expires_at = ?, limit_count = ? WHERE id = ?",
                (expires, len(active), request.request_id),
            )
            # It waits in the queues of exactly the active limits it names, now.
            tx.run(
                "DELETE FROM sluice_queue WHERE ticket_id = ?"
                f" AND limit_id NOT IN ({_marks(len(active))})",
                [request.request_id, *(r.id for r in active)],
            )
            verb = "INSERT OR IGNORE"
        else:
            seq = tx.conn.execute(
                "INSERT INTO sluice_tickets (seq, id, process_id, holder, host, pid, occupy, kind,"
                " limit_count, lease_ttl, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,  # None: the next in arrival order; else the place it had
                    request.request_id,
                    me.id,
                    request.holder,
                    me.host,
                    me.pid,
                    request.occupy,
                    request.kind.value,
                    len(active),
                    ttl,
                    tx.now,
                    expires,
                ),
            ).lastrowid
            assert seq is not None
            verb = "INSERT"
        tx.conn.executemany(
            f"{verb} INTO sluice_queue (limit_id, seq, ticket_id, occupy, kind)"
            " VALUES (?, ?, ?, ?, ?)",
            [(limit_id, seq, *rest) for limit_id, *rest in rows],
        )
        first, _why = blocked[0]
        position = self._position(tx, first.id, seq)
        retry_in, watch = self._next_silent_change(tx, request, blocked, seq, me)
        if watch:
            self._watch(request.request_id, watch)
        return Queued(request.request_id, seq, first.name, position, retry_in, ttl, missing)

    def _position(self, tx: _Tx, limit_id: int, seq: int) -> int:
        row = tx.one(
            "SELECT COUNT(*) FROM sluice_queue WHERE limit_id = ? AND seq < ?", (limit_id, seq)
        )
        assert row is not None
        return int(row[0]) + 1

    def _next_silent_change(
        self,
        tx: _Tx,
        request: AcquireRequest,
        blocked: list[tuple[_LimitRow, str]],
        seq: int,
        me: ProcessInfo,
    ) -> tuple[float | None, set[int]]:
        """When something that sends no wake-up (a token, an expiry) may let us in, and
        which local processes' exits should wake us."""
        times: list[float] = []
        pids: set[int] = set()
        for row, why in blocked:
            if why == "rate" and row.rate is not None and row.burst is not None:
                times.append(gcra.allow_at(row.tat, row.rate, row.burst, request.occupy))
                continue
            # Per process, not per ticket or lease: queues can be long, processes few.
            if why == "queue":
                ahead = tx.all(
                    "SELECT MIN(t.expires_at), t.pid, t.host, t.process_id FROM sluice_queue q"
                    " JOIN sluice_tickets t ON t.id = q.ticket_id"
                    " WHERE q.limit_id = ? AND q.seq < ? GROUP BY t.process_id",
                    (row.id, seq),
                )
            else:
                ahead = tx.all(
                    "SELECT MIN(l.expires_at), l.pid, l.host, l.process_id"
                    " FROM sluice_holdings h JOIN sluice_leases l ON l.id = h.lease_id"
                    " WHERE h.limit_id = ? GROUP BY l.process_id",
                    (row.id,),
                )
            for expires_at, pid, host, process_id in ahead:
                times.append(float(expires_at))
                if host == me.host and process_id != me.id:
                    pids.add(int(pid))
        if not times:
            return None, pids
        return max(0.001, min(times) - tx.now), pids

    # ------------------------------------------------------------- release & renew

    def release(self, lease_id: str) -> bool:
        # Group commit: releases that arrive while another thread of this process is
        # releasing are done together in its next transaction, so a burst of releases
        # costs one write-lock turn, not one each.
        entry = _PendingRelease(lease_id)
        with self._pending_lock:
            self._pending.append(entry)
        with self._release_gate:
            if entry.done:
                return entry.found
            with self._pending_lock:
                batch, self._pending = self._pending, []
            try:
                with self._tx() as tx:
                    for pending in batch:
                        pending.found = self._release_one(tx, pending.lease_id)
            except BaseException:
                # Nothing was released: the others try again, each in its own turn.
                with self._pending_lock:
                    self._pending[:0] = [p for p in batch if p is not entry]
                raise
            for pending in batch:
                pending.done = True
        return entry.found

    def _release_one(self, tx: _Tx, lease_id: str) -> bool:
        if _HAS_RETURNING:
            row = tx.one(
                "DELETE FROM sluice_leases WHERE id = ? RETURNING expires_at, limit_ids",
                (lease_id,),
            )
        else:
            row = tx.one(
                "SELECT expires_at, limit_ids FROM sluice_leases WHERE id = ?", (lease_id,)
            )
            if row is not None:
                tx.run("DELETE FROM sluice_leases WHERE id = ?", (lease_id,))
        if row is None:
            return False
        self._delete_holdings(tx, lease_id, row[1])
        return float(row[0]) > tx.now

    def renew(self, lease_ids: Sequence[str], ticket_ids: Sequence[str]) -> Renewal:
        lost_leases: list[str] = []
        lost_tickets: list[str] = []
        expires: dict[str, float] = {}
        with self._tx() as tx:
            for table, ids, lost in (
                ("sluice_leases", lease_ids, lost_leases),
                ("sluice_tickets", ticket_ids, lost_tickets),
            ):
                for chunk in _chunks(list(ids)):
                    rows = tx.all(
                        f"SELECT id, expires_at, lease_ttl FROM {table}"
                        f" WHERE id IN ({_marks(len(chunk))})",
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
            # Expired but not yet reclaimed is lost too, and final: reclaim it now.
            self._revoke(tx, lost_leases)
            for ticket_id in lost_tickets:
                self._drop_ticket(tx, ticket_id)
        return Renewal(frozenset(lost_leases), frozenset(lost_tickets), expires)

    def abandon(self, request_id: str) -> None:
        with self._tx() as tx:
            self._drop_ticket(tx, request_id)
            self._revoke(tx, [request_id])
        self._unwatch(request_id)

    # ------------------------------------------------------------- shared steps

    def _lease_ids_on(self, tx: _Tx, limit_id: int) -> list[str]:
        return [
            str(r[0])
            for r in tx.all("SELECT lease_id FROM sluice_holdings WHERE limit_id = ?", (limit_id,))
        ]

    def _revoke(self, tx: _Tx, lease_ids: Iterable[str]) -> None:
        """Delete leases and every unit they hold, marking their limits for wake-ups."""
        ids = list(lease_ids)
        for chunk in _chunks(ids):
            marks = _marks(len(chunk))
            for lease_id, limit_ids in tx.all(
                f"SELECT id, limit_ids FROM sluice_leases WHERE id IN ({marks})", chunk
            ):
                self._delete_lease(tx, lease_id, limit_ids)

    def _delete_lease(self, tx: _Tx, lease_id: str, limit_ids: str) -> None:
        self._delete_holdings(tx, lease_id, limit_ids)
        tx.run("DELETE FROM sluice_leases WHERE id = ?", (lease_id,))

    def _delete_holdings(self, tx: _Tx, lease_id: str, limit_ids: str) -> None:
        """Give back the units a lease holds, by primary key, marking the limits touched."""
        for limit_id in _ids(limit_ids):
            tx.run(
                "DELETE FROM sluice_holdings WHERE limit_id = ? AND lease_id = ?",
                (limit_id, lease_id),
            )
            tx.touched.add(limit_id)

    def _drop_ticket(self, tx: _Tx, ticket_id: str, limit_ids: list[int] | None = None) -> bool:
        """Withdraw a ticket from every queue it is in; False if there was none."""
        if limit_ids is None:
            limit_ids = [
                int(r[0])
                for r in tx.all(
                    "SELECT limit_id FROM sluice_queue WHERE ticket_id = ?", (ticket_id,)
                )
            ]
        if not tx.run("DELETE FROM sluice_tickets WHERE id = ?", (ticket_id,)) and not limit_ids:
            return False
        tx.run("DELETE FROM sluice_queue WHERE ticket_id = ?", (ticket_id,))
        ids = limit_ids
        tx.touched.update(ids)
        tx.moved.update(ids)
        return True

    def _reclaim(self, tx: _Tx, limit_ids: Sequence[int]) -> bool:
        """Remove expired leases and tickets, and those of dead local processes, on these limits."""
        if not limit_ids:
            return False
        marks = _marks(len(limit_ids))
        leases = tx.all(
            "SELECT l.id, l.expires_at, l.process_id FROM sluice_holdings h"
            f" JOIN sluice_leases l ON l.id = h.lease_id WHERE h.limit_id IN ({marks})",
            limit_ids,
        )
        tickets = tx.all(
            "SELECT t.id, t.expires_at, t.process_id FROM sluice_queue q"
            f" JOIN sluice_tickets t ON t.id = q.ticket_id WHERE q.limit_id IN ({marks})",
            limit_ids,
        )
        me = self._process.id if self._process is not None else None
        owners = {str(r[2]) for r in (*leases, *tickets)} - {me}
        dead = self._dead_processes(tx, owners) if owners else set()
        expired_leases = {str(r[0]) for r in leases if float(r[1]) <= tx.now or r[2] in dead}
        expired_tickets = {str(r[0]) for r in tickets if float(r[1]) <= tx.now or r[2] in dead}
        for process_id in dead:
            self._forget_process(tx, process_id)
        self._revoke(tx, expired_leases)
        for tid in expired_tickets:
            self._drop_ticket(tx, tid)
        return bool(dead or expired_leases or expired_tickets)

    def _forget_process(self, tx: _Tx, process_id: str) -> None:
        """Drop every lease and ticket of a process that is gone, and its row."""
        self._revoke(
            tx,
            [
                str(r[0])
                for r in tx.all("SELECT id FROM sluice_leases WHERE process_id = ?", (process_id,))
            ],
        )
        for (tid,) in tx.all("SELECT id FROM sluice_tickets WHERE process_id = ?", (process_id,)):
            self._drop_ticket(tx, str(tid))
        tx.run("DELETE FROM sluice_processes WHERE id = ?", (process_id,))

    def _hand_off(self, tx: _Tx) -> tuple[list[tuple[str, list[str]]], list[str]]:
        """Grant waiting tickets that fit now, in arrival order, and say whom to wake.

        Runs at the end of every step that changed a limit's capacity or queue.
        On each such limit, the head ticket is granted if it can be on every
        limit it waits for (it heads each of those queues too, and units and
        tokens suffice); then the next, and so on, stopping at the first that
        cannot be served: strict FIFO, with no capacity left idle while the
        head could use it. Granted tickets are woken to collect their grant; a
        head left waiting is woken when it changed, to learn when its next rate
        token or silent expiry is due.
        """
        wakes: dict[str, str] = dict(tx.wake_tickets)  # ticket -> process
        me = self._process.id if self._process is not None else None
        work = sorted(tx.touched | tx.moved)
        done: set[int] = set()
        while work:
            limit_id = work.pop(0)
            if limit_id in done:
                continue
            done.add(limit_id)
            granted_here = False
            while True:
                head = tx.one(
                    "SELECT t.id, t.seq, t.process_id, t.holder, t.host, t.pid, t.occupy, t.kind,"
                    f" t.limit_count, {_PREFIXED_COLUMNS},"
                    " (SELECT COALESCE(SUM(units), 0) FROM sluice_holdings h"
                    "  WHERE h.limit_id = q.limit_id)"
                    " FROM sluice_queue q JOIN sluice_tickets t ON t.id = q.ticket_id"
                    " JOIN sluice_limits l ON l.id = q.limit_id"
                    " WHERE q.limit_id = ? ORDER BY q.seq LIMIT 1",
                    (limit_id,),
                )
                if head is None:
                    break
                ticket_id, seq, process_id = str(head[0]), int(head[1]), str(head[2])
                claim = _Claim(
                    ticket_id, process_id, head[3], head[4], head[5], head[6], Kind(head[7])
                )
                # This limit, whose queue the ticket heads.
                here = _LimitRow._make((*head[9:17], seq, head[17]))
                if (
                    here.active
                    and claim.kind is Kind.CONCURRENCY
                    and here.slots is not None
                    and here.in_use + claim.occupy > here.slots
                ):
                    break  # no room on this limit: the common case, decided in one query
                # A ticket in one queue needs nothing more; one in several, all of them.
                rows = [here] if head[8] == 1 else self._ticket_limits(tx, ticket_id)
                active = [r for r in rows if r.active]
                blocked = self._blockers(tx, claim.kind, claim.occupy, active, seq)
                if blocked:
                    # A new head waiting for a rate token must learn when it is due;
                    # one waiting for units is served here when they free up.
                    new_head = granted_here or limit_id in tx.moved
                    if new_head and any(why == "rate" for _, why in blocked):
                        wakes[ticket_id] = process_id
                    break
                if process_id != me and process_id not in tx.alive:
                    if self._gone(process_id, claim.host):
                        self._forget_process(tx, process_id)  # never hand units to the dead
                        continue
                    tx.alive.add(process_id)
                self._drop_ticket(tx, ticket_id, [r.id for r in rows])
                self._take(tx, claim, active, (), record_rate=True)
                wakes[ticket_id] = process_id
                granted_here = True
                if (
                    here.active
                    and here.rate is None
                    and here.slots is not None
                    and claim.kind is Kind.CONCURRENCY
                    and here.in_use + claim.occupy >= here.slots
                ):
                    # Full now, and no rate token for a new head to wait on: done here.
                    work.extend(r.id for r in rows if r.id != limit_id)
                    done.difference_update(r.id for r in rows if r.id != limit_id)
                    break
                work.extend(r.id for r in rows if r.id != limit_id)  # their queues moved too
                done.difference_update(r.id for r in rows if r.id != limit_id)
        by_process: dict[str, list[str]] = defaultdict(list)
        for ticket_id, process_id in wakes.items():
            by_process[process_id].append(ticket_id)
        local = by_process.pop(me, []) if me is not None else []
        targets = self._deliver(tx, by_process) if by_process else []
        return targets, local

    def _ticket_limits(self, tx: _Tx, ticket_id: str) -> list[_LimitRow]:
        """The limits a ticket waits on, each with its queue head and units in use."""
        rows = tx.all(
            f"SELECT {_PREFIXED_COLUMNS},"
            " (SELECT MIN(seq) FROM sluice_queue q2 WHERE q2.limit_id = l.id),"
            " (SELECT COALESCE(SUM(units), 0) FROM sluice_holdings h WHERE h.limit_id = l.id)"
            " FROM sluice_queue q JOIN sluice_limits l ON l.id = q.limit_id"
            " WHERE q.ticket_id = ? ORDER BY l.name",
            (ticket_id,),
        )
        return [_LimitRow(*r) for r in rows]

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
        if self._pid == os.getpid() and self._conn is not None:
            if self._process is not None:
                try:
                    with self._tx() as tx:
                        self._forget_process(tx, self._process.id)
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
