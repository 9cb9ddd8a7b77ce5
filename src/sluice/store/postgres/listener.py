"""The wake-up listener of the PostgreSQL store: one LISTEN connection per process and store.

A step that hands grants to tickets (or wakes them) calls
``pg_notify('sluice_<process id>', '{"w": [ticket ids]}')`` inside its own
transaction, so the notification is delivered exactly when the change commits.
It names tickets only: the woken process asks about them in its next exchange,
which claims what was handed to them. Each process listens on its own channel
with one connection, watched by one thread, which hands the ticket ids to the
store's wake handler (the line, which routes them to its tickets).

If the connection drops (server restart, ``pg_terminate_backend``, network),
the thread reconnects with back-off, LISTENs again and then wakes every local
waiter, so none can miss a release that committed while it was deaf. An idle
connection is pinged now and then, so a silently dead one is noticed too.

LISTEN needs a session: through PgBouncer in transaction mode, point this
connection at the server or a session-mode pool (``listen_url``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Collection

import psycopg

from sluice.errors import StoreUnavailable

__all__ = ["PING_INTERVAL", "Listener"]

log = logging.getLogger("sluice.store.postgres")

PING_INTERVAL = 10.0
"""Seconds of silence after which the listener checks its connection with a query."""

_BACKOFF = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class Listener:
    """A thread that LISTENs on one channel and passes ticket ids to ``on_wake``."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[object]],
        channel: str,
        on_wake: Callable[[Collection[str]], None],
        on_reconnect: Callable[[], None],
        url: str,
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._on_wake = on_wake
        self._on_reconnect = on_reconnect
        self._url = url
        self._ready = threading.Event()
        self._error: Exception | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._stopped = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[object] | None = None
        self.backend_pid: int | None = None
        """The server process of the current LISTEN connection (for tests and diagnostics)."""
        self.reconnects = 0

    def start(self, timeout: float = 10.0) -> None:
        """Start listening (once); return when LISTEN is in force, else StoreUnavailable."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sluice-pg-listener", daemon=True
                )
                self._thread.start()
        if not self._ready.wait(timeout):
            raise StoreUnavailable(
                f"PostgreSQL store {self._url}: the wake-up listener could not connect "
                f"within {timeout:g}s ({self._error or 'no answer'})"
            )

    @property
    def listening(self) -> bool:
        """Whether LISTEN has been in force at least once."""
        return self._ready.is_set()

    def stop(self) -> None:
        """Stop the thread and close its connection."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            thread = self._thread
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def abandon_after_fork(self) -> None:
        """In a forked child: forget the parent's thread and connection, touching neither."""
        self._thread = None
        self._stopped = True

    # ------------------------------------------------------------- the thread

    def _run(self) -> None:
        attempt = 0
        first = True
        while not self._stopped:
            try:
                conn = self._listen()
            except Exception as exc:
                self._error = exc
                delay = _BACKOFF[min(attempt, len(_BACKOFF) - 1)]
                attempt += 1
                if attempt in (1, 5) or attempt % 30 == 0:
                    log.warning("sluice: listener for %s cannot connect: %s", self._url, exc)
                if self._sleep(delay):
                    return
                continue
            attempt = 0
            self._ready.set()
            if not first:
                self.reconnects += 1
                log.info("sluice: listener for %s reconnected; waking every waiter", self._url)
                self._safely(self._on_reconnect)
            first = False
            try:
                self._serve(conn)
            except Exception as exc:
                if not self._stopped:
                    log.warning("sluice: listener for %s lost its connection: %s", self._url, exc)
            finally:
                self._conn = None
                with contextlib.suppress(Exception):
                    conn.close()

    def _listen(self) -> psycopg.Connection[object]:
        conn = self._connect()
        try:
            conn.add_notify_handler(self._notified)
            conn.execute(f'LISTEN "{self._channel}"')
            self.backend_pid = conn.info.backend_pid
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _serve(self, conn: psycopg.Connection[object]) -> None:
        """Read notifications until the connection fails or stop() is called."""
        pgconn = conn.pgconn
        sock = pgconn.socket
        quiet_since = time.monotonic()
        while not self._stopped:
            left = PING_INTERVAL - (time.monotonic() - quiet_since)
            if left <= 0:
                conn.execute("SELECT 1")  # raises if the connection died silently
                quiet_since = time.monotonic()
                continue
            readable, _, _ = select.select([sock, self._stop_r], [], [], left)
            if self._stop_r in readable:
                return
            if sock in readable:
                pgconn.consume_input()
                if pgconn.status != psycopg.pq.ConnStatus.OK:
                    raise psycopg.OperationalError("the listener connection was closed")
                while (notify := pgconn.notifies()) is not None:
                    self._deliver(notify.extra.decode())
                quiet_since = time.monotonic()

    def _notified(self, notify: psycopg.Notify) -> None:
        # Notifications that arrive while a ping runs come through psycopg's handler.
        self._deliver(notify.payload)

    def _deliver(self, payload: str) -> None:
        if payload.startswith("{"):  # {"w": [ticket ids]}
            tickets = [str(t) for t in json.loads(payload).get("w") or ()]
        else:
            tickets = [t for t in payload.split(",") if t]
        if tickets:
            self._safely(lambda: self._on_wake(tickets))

    def _safely(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # the listener must outlive any one failing callback
            log.exception("sluice: wake-up callback failed on %s", self._url)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped meanwhile; True if stopped."""
        readable, _, _ = select.select([self._stop_r], [], [], seconds)
        return bool(readable) or self._stopped
