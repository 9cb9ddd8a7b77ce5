"""A deadline for every statement a step sends: libpq has no read timeout of its own.

A server that stops answering (paused, cut off by a partition, behind a frozen
proxy) would leave a step blocked in its read for as long as the TCP connection
lives, which is forever. The :class:`Watchdog` (one thread per store, started on
first use) cuts the connection of a statement still running when its step's
deadline passes: it shuts the socket down (on a duplicate of its descriptor, so
libpq's own stays valid), the blocked read fails at once, and the step raises
StoreUnavailable. Watching costs a lock and a set insertion per statement: the
thread sleeps until the earliest deadline and is only woken for an earlier one.

Connecting is bounded by :func:`within` instead: psycopg waits at least 2 s per
address it tries, whatever ``connect_timeout`` says (libpq's rule), and a name
such as ``localhost`` may have two.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["Watch", "Watchdog", "within"]

T = TypeVar("T")


class Watch:
    """One statement watched: its connection, its deadline, and whether it was cut."""

    __slots__ = ("at", "conn", "fired")

    def __init__(self, conn: Any, at: float) -> None:
        self.conn = conn
        self.at = at
        self.fired = False


class Watchdog:
    """Cuts the connection of a statement still running at its deadline (monotonic)."""

    def __init__(self, idle: float) -> None:
        self._idle = idle  # seconds the thread sleeps when nothing is due sooner
        self._cond = threading.Condition()
        self._watched: set[Watch] = set()
        self._wake_at = 0.0
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, conn: Any, at: float) -> Iterator[Watch]:
        """Watch the statement run inside the block; ``.fired`` says if it was cut."""
        entry = Watch(conn, at)
        with self._cond:
            self._watched.add(entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sluice-pg-watchdog", daemon=True
                )
                self._thread.start()
            elif at < self._wake_at:
                self._cond.notify()
        try:
            yield entry
        finally:
            with self._cond:
                self._watched.discard(entry)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                for entry in [w for w in self._watched if w.at <= now]:
                    # Under the lock: a statement whose block ended is never cut.
                    self._watched.discard(entry)
                    entry.fired = True
                    _cut(entry.conn)
                self._wake_at = min((w.at for w in self._watched), default=now + self._idle)
                self._cond.wait(max(self._wake_at - now, 0.001))


def _cut(conn: Any) -> None:
    """Shut a connection's socket down: whatever waits on it fails at once."""
    with contextlib.suppress(Exception):
        fd = os.dup(conn.pgconn.socket)
        with socket.socket(fileno=fd) as sock:
            sock.shutdown(socket.SHUT_RDWR)


class _Attempt(Generic[T]):
    """One call run by :func:`within`: its outcome, or that its caller left."""

    def __init__(self, make: Callable[[], T], close: Callable[[T], None]) -> None:
        self.make = make
        self.close = close
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.left = False

    def run(self) -> None:
        try:
            result = self.make()
        except BaseException as exc:  # handed to the caller
            with self.lock:
                self.error = exc
                self.done.set()
            return
        with self.lock:
            if not self.left:
                self.result = result
                self.done.set()
                return
        with contextlib.suppress(Exception):  # too late: nobody takes it
            self.close(result)


def within(make: Callable[[], T], seconds: float, close: Callable[[T], None]) -> T | None:
    """``make()`` run on a helper thread, waited for at most ``seconds``: its result (or its
    error, raised), or None if it took longer (what it makes later is closed)."""
    attempt = _Attempt(make, close)
    threading.Thread(target=attempt.run, name="sluice-pg-connect", daemon=True).start()
    attempt.done.wait(seconds)
    with attempt.lock:
        if not attempt.done.is_set():
            attempt.left = True
            return None
    if attempt.error is not None:
        raise attempt.error
    return attempt.result
