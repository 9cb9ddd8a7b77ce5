"""The SQLite store's reads: WAL read transactions that never wait for a writer.

``get``, ``list``, ``inspect`` (and so ``sluice limit ls``, the dashboard and the
exporter) read on a connection of their own, in a read transaction: in WAL mode it
takes no write lock, so a read answers at once even while another process holds the
write lock (a paused one included), and it writes nothing. What ``inspect`` shows is
the store as the next write step would leave it: leases and tickets that expired,
or whose process is gone, are left out (not reclaimed: the next write step does
that, and counts it in the totals), and a stall under way is credited as that step
would credit it (:mod:`sluice.store.sqlite.stall`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sluice.errors import StoreError
from sluice.limits import gcra
from sluice.limits.model import Holder, LimitStatus, Waiter, utc
from sluice.store.deadline import Deadline
from sluice.store.sqlite import stall
from sluice.store.sqlite.engine import SQLiteEngine
from sluice.store.sqlite.schema import SCHEMA_VERSION, read_version
from sluice.store.sqlite.totals import read_totals
from sluice.store.sqlite.tx import Tx

__all__ = ["Reads"]


class Reads(SQLiteEngine):
    """Reads on a connection of their own (the store's hooks say where processes live)."""

    url: str
    path: str
    step_timeout: float
    _mutex: threading.Lock
    _read_mutex: threading.Lock
    _read_conn: sqlite3.Connection | None

    def _connection(self, deadline: Deadline) -> sqlite3.Connection:
        raise NotImplementedError

    def _stall_began(self) -> float | None:
        """When a stall under way began, if one is (None: none, or no other process)."""
        raise NotImplementedError

    def _gone_now(self, process_id: str, host: str) -> bool:
        """Whether a process is known gone, for a read (changes nothing)."""
        raise NotImplementedError

    def _reader(self) -> tuple[threading.Lock, sqlite3.Connection]:
        """A second connection, for reads: WAL read transactions never wait for a writer,
        so reads answer while another process holds the write lock (even paused)."""
        if self._read_conn is None:
            with self._read_mutex:
                if self._read_conn is None:
                    if read_version(self.path) != SCHEMA_VERSION:
                        with self._mutex:  # no file or an older schema: made or migrated first
                            self._connection(Deadline(self.step_timeout))
                    self._read_conn = sqlite3.connect(
                        self.path,
                        timeout=self.step_timeout,
                        isolation_level=None,
                        check_same_thread=False,
                    )
        return self._read_mutex, self._read_conn

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        """Rows of one query, read without taking the write lock."""
        try:
            lock, conn = self._reader()
            with lock:
                return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.url} failed: {exc}") from exc

    def inspect_limit(self, name: str) -> LimitStatus:
        """A read: what the store holds, as the next write step would leave it (expired
        leases and tickets, and those of processes gone, left out; a stall under way
        credited), without waiting for the write lock or writing anything."""
        with self._snapshot() as tx:
            row = self._limit_row(tx, name)
            live = self._live(tx)
            holders = [
                Holder(str(r[0]), int(r[1]), str(r[2]), str(r[3]), int(r[4]), utc(r[5]), utc(r[6]))
                for r in tx.all(
                    "SELECT l.id, h.units, l.holder, l.host, l.pid, l.acquired_at, l.expires_at,"
                    " l.process_id FROM sluice_holdings h JOIN sluice_leases l"
                    " ON l.id = h.lease_id WHERE h.limit_id = ? ORDER BY l.acquired_at, l.id",
                    (row.id,),
                )
                if live(r[6], r[7], r[3])
            ]
            waiters = []
            position = 1
            for r in tx.all(
                "SELECT t.id, q.occupy, t.holder, t.host, t.pid, t.created_at, t.wanted,"
                " t.expires_at, t.process_id FROM sluice_queue q"
                " JOIN sluice_tickets t ON t.id = q.ticket_id WHERE q.limit_id = ? ORDER BY q.seq",
                (row.id,),
            ):
                if not live(r[7], r[8], r[3]):
                    continue
                wanted = int(r[6])
                waiters.append(
                    Waiter(
                        str(r[0]),
                        int(r[1]),
                        str(r[2]),
                        str(r[3]),
                        int(r[4]),
                        utc(r[5]),
                        position,
                        wanted,
                    )
                )
                position += wanted
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
                totals=read_totals(tx, row.id),
            )

    @contextmanager
    def _snapshot(self) -> Iterator[Tx]:
        """One read transaction: a consistent view, taken without the write lock."""
        try:
            lock, conn = self._reader()
            with lock:
                conn.execute("BEGIN")
                try:
                    yield Tx(conn, time.time())
                finally:
                    conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise stall.unavailable(self.url, exc) or StoreError(
                f"SQLite store {self.url} failed: {exc}"
            ) from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.url} failed: {exc}") from exc

    def _live(self, tx: Tx) -> Callable[[object, object, object], bool]:
        """Whether a lease or ticket (expires_at, process id, host) is one the next write
        step would keep: not expired (a stall under way credited), its process not gone."""
        began = self._stall_began()
        cutoff = tx.now if began is None else min(tx.now, began)
        gone: dict[str, bool] = {}

        def live(expires_at: object, process_id: object, host: object) -> bool:
            if float(str(expires_at)) <= cutoff:
                return False
            key = str(process_id)
            if key not in gone:
                gone[key] = self._gone_now(key, str(host))
            return not gone[key]

        return live
