"""The PostgreSQL store: ``postgresql://user@host:5432/db?schema=sluice``, shared by many hosts.

Each operation is one call of a PL/pgSQL step function (``sql/*.sql``),
run in autocommit mode: one round trip, one transaction. The functions lock
the rows of the limits they work on in name order, so concurrent multi-limit
acquisitions cannot deadlock; time is the database's ``clock_timestamp()``.
The schema (default ``sluice``) is created on first use and migrated forward
under an advisory lock, so processes starting together do not race. Each
limit's totals (:class:`~sluice.limits.model.LimitTotals`) live in its own row
and are counted by the same step functions that grant, time out and reclaim
(``sql/migrate_002.sql`` lists where).

Wake-ups are LISTEN/NOTIFY: a step that hands grants to tickets (or wakes
them) notifies the processes that own them inside its own transaction, naming
the tickets; each process has one listening connection
(:mod:`sluice.store.postgres.listener`), and a woken process asks about its
tickets in its next exchange, which claims what was handed to them. Crash
detection across hosts is lease expiry alone: a waiter blocked by a holder is
told when that lease expires (``Queued.retry_in``) and reclaims it then.

:class:`PostgresStore` drives the plans of :mod:`sluice.store.postgres.plans`
over psycopg connections, each call on a connection of its bounded pool: a
process uses at most ``pool_size`` connections for steps, whoever calls (the
line's rounds, the keeper's renewals, the async front door's worker threads),
plus its one LISTEN connection. Driver errors become Sluice errors.

Deadlines: a step (its resends and retries included) takes at most the step
deadline (``SLUICE_STEP_TIMEOUT``), then raises StoreUnavailable. Connections are
made with ``connect_timeout`` (:data:`CONNECT_TIMEOUT`, or what the URL says; libpq
waits at least 2 s), run statements under ``statement_timeout`` (the deadline,
server side; not set through a transaction pooler, ``prepared=false``), and a
:class:`~sluice.store.postgres.watchdog.Watchdog` cuts the connection of a
statement still running at its step's deadline: libpq has no read timeout, and a
server that stops answering would otherwise hold a step forever.
"""

from __future__ import annotations

import contextlib
import math
import select
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, TypeVar

try:
    import psycopg
except ImportError as exc:  # pragma: no cover - depends on the optional driver
    from sluice.errors import ConfigError

    raise ConfigError(
        "the postgresql:// store needs psycopg 3.1 or newer: pip install 'sluice[postgres]'"
    ) from exc

from sluice import _fork
from sluice.errors import SluiceError, StoreError
from sluice.limits.model import Limit, LimitChanges, LimitStatus, validate_name
from sluice.store.audit import AdminRecord, check_history_count
from sluice.store.base import (
    Exchange,
    Exchanged,
    HeldSpan,
    Renewal,
    StoreDiagnosis,
    WakeHandler,
)
from sluice.store.deadline import Deadline, overdue, step_timeout
from sluice.store.plans import Plan, run_plan
from sluice.store.postgres.config import (
    RETRY_SQLSTATES,
    SCHEMA_VERSION,
    PgConfig,
    StepOverdue,
    migration_sql,
    parse_url,
    translate,
)
from sluice.store.postgres.listener import Listener
from sluice.store.postgres.plans import Call, Engine, wakes_in
from sluice.store.postgres.watchdog import Watchdog
from sluice.store.postgres.watchdog import within as within_deadline

__all__ = ["SAFETY_INTERVAL", "PostgresStore", "from_url"]

T = TypeVar("T")

SAFETY_INTERVAL = 30.0
"""Seconds a waiter sleeps without a wake-up before re-checking anyway.

Nothing depends on it: wake-ups are notifications committed with the change,
a reconnecting listener wakes every waiter, and a waiter blocked by a lease or
ticket that could expire is told when (``retry_in``). It only bounds the cost
of a bug, cheaply for idle waiters.
"""

_RETRIES = 20

CONNECT_TIMEOUT = 5.0
"""Seconds a connection may take to be made, unless the URL's ``connect_timeout`` says
otherwise (at most the time the step has left; libpq's least is 2 s)."""

MIGRATION_TIMEOUT = 300.0
"""Seconds creating or migrating the schema may take (it may rewrite tables)."""


def _readable(fd: int) -> bool:
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


def _usable(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle pooled connection can take a step.

    An idle connection receives nothing; if its socket is readable the server
    sent something (a FATAL before closing: ``pg_terminate_backend``, a
    restart), so it is replaced before a step is sent on it, not after.
    """
    if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return False
    return not _readable(conn.pgconn.socket)


def _close(conn: psycopg.Connection[Any]) -> None:
    conn.close()


class _Pool:
    """At most ``size`` autocommit connections, each used by one step at a time; a caller
    finding none free waits for one."""

    def __init__(self, connect: Callable[[Deadline], psycopg.Connection[Any]], size: int) -> None:
        self._connect = connect
        self._size = size
        self._idle: list[psycopg.Connection[Any]] = []
        self._count = 0
        self._cond = threading.Condition()
        self._closed = False

    @contextlib.contextmanager
    def connection(self, deadline: Deadline) -> Iterator[psycopg.Connection[Any]]:
        conn = self._take(deadline)
        try:
            yield conn
        except BaseException:
            self._give_back(
                conn,
                conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE,
            )
            raise
        self._give_back(conn, False)

    def _take(self, deadline: Deadline) -> psycopg.Connection[Any]:
        with self._cond:
            while True:
                while self._idle:
                    conn = self._idle.pop()
                    if _usable(conn):
                        return conn
                    self._count -= 1
                    with contextlib.suppress(Exception):
                        conn.close()
                if self._count < self._size:
                    self._count += 1
                    break
                if deadline.passed:
                    raise StepOverdue("waiting for a free connection of the pool")
                self._cond.wait(deadline.left())
        try:
            return self._connect(deadline)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _give_back(self, conn: psycopg.Connection[Any], discard: bool) -> None:
        with self._cond:
            if discard or self._closed:  # (a step that ended after close(): it goes too)
                self._count -= 1
                with contextlib.suppress(Exception):
                    conn.close()
            else:
                self._idle.append(conn)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()

    def abandon(self) -> None:
        """In a forked child: keep the parent's connections referenced, never used or closed."""
        _fork.keep_unclosed(*self._idle)
        self._idle = []


class PostgresStore:
    """Limits, leases and FIFO queues in PostgreSQL tables; one transaction per operation."""

    safety_interval = SAFETY_INTERVAL

    def __init__(self, url: str) -> None:
        self._config: PgConfig = parse_url(url)
        self.url = self._config.url
        self.step_timeout = step_timeout()
        """Seconds one step may take, its resends, retries and connections included."""
        self._steps = threading.local()  # .deadline: the step this thread runs now
        self._closed = False
        self._handler: WakeHandler | None = None
        self._start()
        _fork.track(self, PostgresStore._after_fork)

    def _start(self) -> None:
        # Also run in a forked child: a new identity, pool and listener.
        self._engine = Engine(self._config)
        self._pool = _Pool(self._connect, self._config.pool_size)
        self._watchdog = Watchdog(self.step_timeout)
        self._lock = threading.Lock()
        self._schema_ready = False
        self._listener: Listener | None = None

    @property
    def pool_size(self) -> int:
        """How many connections this process's steps share (the URL's pool_size)."""
        return self._config.pool_size

    def _after_fork(self) -> None:
        self._pool.abandon()
        if self._listener is not None:
            self._listener.abandon_after_fork()
        self._start()

    # ------------------------------------------------------------- connections

    def _connect(
        self, deadline: Deadline | None = None, listener: bool = False
    ) -> psycopg.Connection[Any]:
        config = self._config
        name = config.application_name
        if listener:
            name = f"{name[: 63 - len(':listen')]}:listen"
        within = CONNECT_TIMEOUT if deadline is None else min(CONNECT_TIMEOUT, deadline.left())
        if deadline is not None and deadline.passed:
            raise StepOverdue("connecting")
        options: dict[str, Any] = {}
        if config.connect_timeout is None:
            options["connect_timeout"] = max(2, math.ceil(within))

        def make() -> psycopg.Connection[Any]:
            conn = psycopg.Connection.connect(
                config.listen_conninfo if listener else config.conninfo,
                autocommit=True,
                application_name=name,
                prepare_threshold=5 if config.prepared else None,
                **options,
            )
            if config.prepared and not listener:  # (a transaction pooler would leak a SET)
                conn.execute(f"SET statement_timeout = {max(int(self.step_timeout * 1000), 1)}")
            return conn

        try:
            if deadline is None:
                return make()
            # psycopg waits 2 s at least per address: the step waits no longer than it may.
            made = within_deadline(make, deadline.left(), _close)
        except psycopg.Error as exc:
            raise translate(exc, self.url) from exc
        if made is None:
            raise StepOverdue("connecting")
        return made

    def _execute(self, conn: psycopg.Connection[Any], call: Call[Any]) -> Any:
        row = conn.execute(call.sql, call.params).fetchone()
        result = row[0] if row is not None else None
        wakes = wakes_in(result)
        if wakes:
            self._wake_local(wakes)
        return result

    def _translate(self, exc: Exception) -> SluiceError | None:
        """The Sluice error a psycopg error means; None for a deadlock or serialization
        failure (the driver runs the whole plan again) and for anything not psycopg's."""
        if not isinstance(exc, psycopg.Error) or exc.sqlstate in RETRY_SQLSTATES:
            return None
        return translate(exc, self.url)

    def _call(self, call: Call[Any]) -> Any:
        """Run one call on a pooled connection (a connection that failed is not reused),
        within the deadline of the step this thread runs."""
        deadline: Deadline = getattr(self._steps, "deadline", None) or Deadline(self.step_timeout)
        try:
            with (
                self._pool.connection(deadline) as conn,
                self._watchdog.watch(conn, deadline.at) as watch,
            ):
                try:
                    return self._execute(conn, call)
                except psycopg.Error as exc:
                    if watch.fired:
                        raise StepOverdue("waiting for its answer") from exc
                    raise
        except StepOverdue as exc:
            raise overdue(self.url, deadline.seconds, str(exc)) from exc

    @contextlib.contextmanager
    def _step(self, deadline: Deadline | None = None) -> Iterator[Deadline]:
        """The deadline of the step this thread runs now (a new one, unless given)."""
        step = deadline or Deadline(self.step_timeout)
        self._steps.deadline = step
        try:
            yield step
        finally:
            self._steps.deadline = None

    def _drive(self, make: Callable[[], Plan[T]], deadline: Deadline | None = None) -> T:
        """Run a plan, each call one transaction; retry it whole after a deadlock."""
        if self._closed:
            raise StoreError(f"store {self.url} is closed")
        with self._step(deadline) as step:
            if not self._schema_ready:
                self.ensure_schema(step)
            for attempt in range(_RETRIES):
                try:
                    return run_plan(make(), self._call, self._translate)
                except psycopg.Error as exc:
                    if exc.sqlstate in RETRY_SQLSTATES and attempt < _RETRIES - 1:
                        time.sleep(0.001 * (attempt + 1))
                        continue
                    raise translate(exc, self.url) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def ensure_schema(self, deadline: Deadline | None = None) -> None:
        """Create or migrate the schema once per process, under an advisory lock (reading
        its version within the step deadline; a migration may take MIGRATION_TIMEOUT)."""
        step = deadline or Deadline(self.step_timeout)
        with self._lock:
            if self._schema_ready:
                return
            cut = False
            try:
                with self._pool.connection(step) as conn:
                    with self._watchdog.watch(conn, step.at) as watch:
                        try:
                            current = self._version(conn) == SCHEMA_VERSION
                        finally:
                            cut = watch.fired
                    if not current:
                        migration = Deadline(MIGRATION_TIMEOUT)
                        with self._watchdog.watch(conn, migration.at) as watch:
                            self._migrate(conn)
            except StepOverdue as exc:
                raise overdue(self.url, step.seconds, str(exc)) from exc
            except psycopg.Error as exc:
                if cut:
                    raise overdue(self.url, step.seconds, "reading the schema") from exc
                raise translate(exc, self.url) from exc
            self._schema_ready = True

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        schema = self._config.schema
        q = self._config.quoted_schema
        version = self._version(conn)
        if version == SCHEMA_VERSION:
            return
        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = 0")  # a migration may take long
            # Two processes starting at once: the second waits here, then finds it done.
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"sluice {q}",))
            # CREATE SCHEMA needs the CREATE privilege on the database even when the
            # schema exists: a schema made beforehand by an administrator is used as is.
            if conn.execute("SELECT to_regnamespace(%s)", (q,)).fetchone() == (None,):
                conn.execute(f"CREATE SCHEMA {q}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {q}.meta (key text PRIMARY KEY, value text NOT NULL)"
            )
            version = self._version(conn) or 0
            if version < SCHEMA_VERSION:
                for script in migration_sql(schema, version):
                    conn.execute(script)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.url} has schema version {version}, newer than this Sluice "
                f"understands ({SCHEMA_VERSION}); upgrade Sluice"
            )

    def _version(self, conn: psycopg.Connection[Any]) -> int | None:
        q = self._config.quoted_schema
        exists = conn.execute("SELECT to_regclass(%s)", (f"{q}.meta",)).fetchone()
        if exists is None or exists[0] is None:
            return None
        row = conn.execute(f"SELECT value FROM {q}.meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row is not None else None

    # ------------------------------------------------------------- wake-ups

    def _ensure_listening(self, within: float) -> None:
        """Start this process's listener and wait (``within`` seconds, at most) until its
        LISTEN is in force."""
        with self._lock:
            if self._listener is None:
                self._listener = Listener(
                    lambda: self._connect(listener=True),
                    self._engine.channel,
                    self._wake_local,
                    self._wake_all,
                    self.url,
                )
            listener = self._listener
        listener.start(within)

    def _listening(self) -> bool:
        return self._listener is not None and self._listener.listening

    def _wake_local(self, ticket_ids: Collection[str]) -> None:
        handler = self._handler
        if handler is not None:
            handler(ticket_ids)

    def _wake_all(self) -> None:
        """After the listener was deaf for a while: every local waiter looks again."""
        waiting = list(self._engine.waiting)
        if waiting:
            self._wake_local(waiting)

    def set_wake_handler(self, handler: WakeHandler) -> None:
        self._handler = handler

    # ------------------------------------------------------------- the Store protocol

    def now(self) -> float:
        return self._drive(self._engine.now)

    def create_limit(self, limit: Limit) -> Limit:
        return self._drive(lambda: self._engine.create_limit(limit))

    def ensure_limit(self, limit: Limit) -> Limit:
        return self._drive(lambda: self._engine.ensure_limit(limit))

    def get_limit(self, name: str) -> Limit:
        return self._drive(lambda: self._engine.get_limit(name))

    def list_limits(self) -> list[Limit]:
        return self._drive(self._engine.list_limits)

    def update_limit(self, name: str, changes: LimitChanges) -> Limit:
        return self._drive(lambda: self._engine.update_limit(name, changes))

    def set_active(self, name: str, active: bool) -> Limit:
        return self._drive(lambda: self._engine.set_active(name, active))

    def reset_limit(self, name: str) -> int:
        return self._drive(lambda: self._engine.reset_limit(name))

    def delete_limit(self, name: str, force: bool = False) -> None:
        self._drive(lambda: self._engine.delete_limit(name, force))

    def inspect_limit(self, name: str) -> LimitStatus:
        return self._drive(lambda: self._engine.inspect_limit(name))

    def held_spans(self, names: Sequence[str], since: float, until: float) -> list[HeldSpan]:
        return self._drive(lambda: self._engine.held_spans(names, since, until))

    def record_admin(self, name: str, action: str, changes: Mapping[str, Any]) -> AdminRecord:
        name = validate_name(name)
        return self._drive(lambda: self._engine.record_admin(name, action, changes))

    def admin_history(self, name: str, count: int = 100) -> list[AdminRecord]:
        name, count = validate_name(name), check_history_count(count)
        return self._drive(lambda: self._engine.admin_history(name, count))

    def exchange(self, batch: Exchange) -> Exchanged:
        deadline = Deadline(self.step_timeout)
        if not self._listening():
            self._ensure_listening(deadline.left())  # before a ticket a wake-up could name
        payload = self._engine.payload(batch)  # once: a retry or resend repeats it
        return self._drive(lambda: self._engine.exchange(batch, payload), deadline)

    def renew(self, lease_ids: Sequence[str], ticket_ids: Sequence[str]) -> Renewal:
        return self._drive(lambda: self._engine.renew(lease_ids, ticket_ids))

    def diagnose(self) -> StoreDiagnosis:
        """Read-only facts for ``sluice doctor``; never creates or migrates the schema."""
        try:
            with self._step():
                return run_plan(self._engine.diagnose(), self._call, self._translate)
        except psycopg.Error as exc:
            raise translate(exc, self.url) from exc

    # ------------------------------------------------------------- lifecycle

    @property
    def closed(self) -> bool:
        """Whether close() has been called."""
        return self._closed

    @property
    def process_id(self) -> str:
        """This process's id in the store (its wake-up channel is ``sluice_<id>``)."""
        return self._engine.process_id

    @property
    def listener(self) -> Listener | None:
        """This process's wake-up listener, once started."""
        return self._listener

    def close(self) -> None:
        """Give back this process's leases and queue places, then close every connection."""
        if self._closed:
            return
        if self._schema_ready:
            with contextlib.suppress(StoreError):
                self._drive(self._engine.forget_process)
        if self._listener is not None:
            self._listener.stop()
        self._pool.close()
        self._closed = True


def from_url(url: str) -> PostgresStore:
    """Open the store of a ``postgresql://`` or ``postgres://`` URL (connects on first use)."""
    return PostgresStore(url)
