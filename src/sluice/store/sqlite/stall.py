"""When the SQLite store stalls: bounded waits for the write lock, and no lease lost to it.

A process paused inside a write transaction (Ctrl-Z, SIGSTOP, a debugger, a frozen
container) keeps the write lock, and every writer on the host waits for it. Two
rules make such a stall harmless:

* **Bounded waits.** A writer waits for the lock (Sluice's ``write.lock``, then
  SQLite's own) at most its step deadline (:mod:`sluice.store.deadline`), then
  fails with StoreUnavailable. Reads never wait: they are WAL read transactions
  on a connection of their own, which take no write lock and write nothing.
* **Stall credit.** A writer that waited :data:`~sluice.store.sqlite.ipc.STALL_AFTER`
  seconds or more says so (``<db>.sluice/stalled``). The next write step to get the
  lock, whoever runs it, then treats the time since the last commit to the database
  (the write-ahead log's modification time) as a stall: every lease and ticket
  still live when it began gets its length added to its expiry, so no holder loses
  a lease because its renewals could not get through, and no waiter is let in on
  units whose holder is still inside. The stall is credited once: the commit that
  credits it is the new last commit. A holder that pauses itself (not the store)
  still loses its lease when it lapses: nothing waits for the lock meanwhile.

The credit also covers the idle time before a stall, if the store was idle (no
commit at all) when a process paused inside a transaction: leases that should have
been renewed during that idle time belong to holders that were hung already, and
keep their lease for that long more, once.
"""

from __future__ import annotations

import sqlite3

from sluice.errors import StoreUnavailable
from sluice.store.deadline import Deadline, overdue
from sluice.store.sqlite.ipc import (
    STALL_AFTER,
    FileLock,
    clear_stall,
    last_commit,
    mark_stall,
    stall_marked,
)
from sluice.store.sqlite.tx import Tx

__all__ = ["BUSY_TIMEOUT", "begin_write", "credit_stall", "stall_began", "stall_credited"]

BUSY_TIMEOUT = STALL_AFTER
"""Seconds SQLite's busy handler waits for its write lock before a writer marks a stall
(and goes on waiting, up to its deadline). Sluice's writers queue on ``write.lock``
first, so only a writer outside it (a paused connection, a tool) ever makes it wait."""


_SQLITE_BUSY = 5


def _busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == _SQLITE_BUSY or "locked" in str(exc)


def begin_write(
    conn: sqlite3.Connection, lock: FileLock, path: str, deadline: Deadline, url: str
) -> None:
    """Take Sluice's write lock, then begin SQLite's write transaction, within the deadline.

    Raises StoreUnavailable past it (nothing taken); marks a stall on the way when the
    lock is slow to come. On success the caller releases ``lock`` after its COMMIT.
    """
    if not lock.acquire(deadline.left(), lambda: mark_stall(path)):
        raise overdue(url, deadline.seconds, "waiting for the write lock: a process holds it")
    try:
        _begin(conn, path, deadline, url)
    except BaseException:
        lock.release()
        raise


def _begin(conn: sqlite3.Connection, path: str, deadline: Deadline, url: str) -> None:
    try:
        conn.execute("BEGIN IMMEDIATE")
        return
    except sqlite3.OperationalError as exc:
        if not _busy(exc):
            raise
    # A connection outside Sluice's lock holds SQLite's write lock (a paused one?).
    mark_stall(path)
    left = deadline.left()
    if left > 0:
        conn.execute(f"PRAGMA busy_timeout = {max(int(left * 1000), 1)}")
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
    raise overdue(url, deadline.seconds, "waiting for SQLite's write lock: a connection holds it")


def stall_began(path: str) -> float | None:
    """When the stall under way began (the last commit), if a writer marked one since; else
    None. For reads, which credit nothing but show what the next write step would."""
    marked = stall_marked(path)
    if marked is None:
        return None
    since = last_commit(path)
    return since if marked > since else None


def credit_stall(tx: Tx, path: str, waited: float) -> bool:
    """In a write step that just began: credit the stall under way, if there was one.

    There was if a writer marked one after the last commit, or this step itself
    waited :data:`STALL_AFTER` or more. Every lease and ticket live when it began (the
    last commit) gets the time since added to its expiry. Returns whether a mark is
    to be cleared once this step commits (:func:`stall_credited`).
    """
    marked = stall_marked(path)
    if marked is None and waited < STALL_AFTER:
        return False
    since = last_commit(path)
    if waited < STALL_AFTER and marked is not None and marked <= since:
        return True  # an old mark, credited already (or never a stall): clear it
    amount = tx.now - since
    if amount >= STALL_AFTER:
        for table in ("sluice_leases", "sluice_tickets"):
            tx.run(
                f"UPDATE {table} SET expires_at = expires_at + ? WHERE expires_at > ?",
                (amount, since),
            )
    return marked is not None


def stall_credited(path: str) -> None:
    """After the commit that credited a stall: clear its mark."""
    clear_stall(path)


def unavailable(url: str, exc: sqlite3.OperationalError) -> StoreUnavailable | None:
    """The StoreUnavailable a busy database means (a read that could not get in), or None."""
    if _busy(exc):
        return StoreUnavailable(f"SQLite store {url} is locked: {exc}")
    return None
