"""Per process and store: where wake-ups go, and the one thread that renews every lease.

A :class:`Session` (one per store in a process) holds the process's line of
waiters (which batches every acquire and release into few store steps), and the
one :class:`Keeper` thread that renews every lease and ticket of the process in
one store call. The store's wake-ups go to the line, except those that name a
lease of the process: the store revoked it (a reset, a forced delete), and the
keeper marks it lost at once instead of at its next renewal.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor

from sluice import _fork
from sluice.errors import StoreError
from sluice.limits.lease import LOST, REVOKED, LeaseState
from sluice.limits.line import Line
from sluice.store.base import Store

__all__ = ["Keeper", "Session", "session_for"]

log = logging.getLogger("sluice.limits")


class Keeper:
    """One thread per process and store that renews every lease and ticket in one call.

    Renewals run every third of the shortest TTL among what is tracked, so a
    live process never lets a lease lapse; a lease the store reports gone is
    marked lost, final. A lease revoked by a reset is marked lost as soon as the
    store's wake-up says so (:meth:`revoked`), else at the next renewal: within a
    third of the lease's TTL, plus a round trip.
    """

    def __init__(self, store: Store, wake: Callable[[Collection[str]], None]) -> None:
        self._store = store
        self._wake = wake
        self._cond = threading.Condition()
        self._leases: dict[str, LeaseState] = {}
        self._tickets: dict[str, float] = {}  # ticket id -> ttl
        self._thread: threading.Thread | None = None
        self._next_round = math.inf  # monotonic time of the next renewal round
        self._stopped = False

    def track_lease(self, state: LeaseState) -> None:
        with self._cond:
            self._leases[state.id] = state
            self._schedule(state.lease_ttl)

    def untrack_lease(self, lease_id: str) -> None:
        with self._cond:
            self._leases.pop(lease_id, None)

    def revoked(self, ids: Collection[str]) -> Collection[str]:
        """Mark lost the leases among ``ids``, which the store revoked; return the other ids."""
        with self._cond:
            if not self._leases:
                return ids
            gone = [self._leases.pop(i) for i in ids if i in self._leases]
        if not gone:
            return ids
        for state in gone:
            if not state.released:
                state.mark_lost(REVOKED)
        named = {state.id for state in gone}
        return [i for i in ids if i not in named]

    def track_ticket(self, ticket_id: str, ttl: float) -> None:
        with self._cond:
            self._tickets[ticket_id] = ttl
            self._schedule(ttl)

    def untrack_ticket(self, ticket_id: str) -> None:
        with self._cond:
            self._tickets.pop(ticket_id, None)

    def _schedule(self, ttl: float) -> None:
        # Wake the keeper only if this renewal is due before its next planned round:
        # a busy acquire/release loop must not cost a thread wake-up per lease.
        due = time.monotonic() + ttl / 3
        if self._thread is None:
            self._next_round = due
            self._thread = threading.Thread(target=self._run, name="sluice-keeper", daemon=True)
            self._thread.start()
        elif due < self._next_round:
            self._next_round = due
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    left = self._next_round - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(None if left == math.inf else left)
                if self._stopped:
                    return
                leases = dict(self._leases)
                tickets = list(self._tickets)
                ttls = [s.lease_ttl for s in leases.values()] + [self._tickets[t] for t in tickets]
                # Nothing held: sleep until something is (track_* will wake us).
                self._next_round = time.monotonic() + min(ttls) / 3 if ttls else math.inf
            if leases or tickets:
                try:
                    self._renew(leases, tickets)
                except Exception:  # the keeper must outlive any one failure
                    log.exception("sluice: lease renewal failed on %s", self._store.url)

    def _renew(self, leases: dict[str, LeaseState], tickets: list[str]) -> None:
        try:
            renewal = self._store.renew(list(leases), tickets)
        except StoreError as exc:
            log.warning("sluice: could not renew leases on %s: %s", self._store.url, exc)
            now = time.time()
            if _credits_stall(self._store):
                return  # no lease is lost to a stall of the store itself: it is credited
            for state in leases.values():
                if now >= state.expires_at and not state.released:
                    state.mark_lost("renewals failed past its TTL")
            return
        for lease_id, state in leases.items():
            if lease_id in renewal.lost_leases and not state.released:
                state.mark_lost(LOST)
                self.untrack_lease(lease_id)
            elif lease_id in renewal.expires_at:
                state.expires_at = renewal.expires_at[lease_id]
        if renewal.lost_tickets:
            # The ticket lapsed (e.g. a long pause); its waiter re-queues at its old place.
            self._wake(renewal.lost_tickets)


def _credits_stall(store: Store) -> bool:
    """Whether the store is stalled for every process and will credit the stall to the
    leases live when it began (SQLite: :mod:`sluice.store.sqlite.stall`)."""
    stalled = getattr(store, "stalled", None)
    return bool(stalled()) if callable(stalled) else False


class Session:
    """Per process and store: the line of waiters (:class:`~sluice.limits.line.Line`),
    the keeper that renews their leases and tickets, and where wake-ups go."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._start()
        store.set_wake_handler(self.wake)

    def _start(self) -> None:
        # Also run in a forked child: no thread, waiter or lock state survives fork.
        self._lock = threading.Lock()
        self.keeper = Keeper(self.store, self.wake)
        self.line = Line(
            self.store,
            self.keeper.track_lease,
            self.keeper.track_ticket,
            self.keeper.untrack_ticket,
        )
        self._executor: ThreadPoolExecutor | None = None

    def wake(self, ticket_ids: Collection[str]) -> None:
        """The store says these tickets should be looked at again, and these leases of
        this process were revoked (the leases first: their holders learn it before a
        waiter of this process can be handed their units)."""
        rest = self.keeper.revoked(ticket_ids)
        if rest:
            self.line.wake(rest)

    def close(self) -> None:
        """Stop the line, the keeper and the worker threads once the store itself is closed."""
        self.line.close()
        self.keeper.stop()
        with _sessions_lock:
            _sessions.pop(self.store, None)
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def executor(self) -> ThreadPoolExecutor:
        """Worker threads on which async callers run this store's admin steps."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(4, thread_name_prefix="sluice-aio")
            return self._executor


_sessions: weakref.WeakKeyDictionary[Store, Session] = weakref.WeakKeyDictionary()
_sessions_lock = threading.Lock()


def session_for(store: Store) -> Session:
    """The one session of ``store`` in this process."""
    with _sessions_lock:
        session = _sessions.get(store)
        if session is None:
            session = _sessions[store] = Session(store)
        return session


def _reset_after_fork() -> None:
    global _sessions_lock
    _sessions_lock = threading.Lock()
    for session in list(_sessions.values()):
        session._start()


_fork.after_fork_in_child(_reset_after_fork)
