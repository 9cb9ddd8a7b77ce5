"""Waiting, wake-ups, timeouts and lease renewal: written once, above every store.

A store answers each acquire attempt at once — granted, or queued with a hint
of when to look again. Everything that involves time lives here:

* :class:`Attempt` — the pure decision of what a waiter does after each
  answer (return, sleep how long, or give up with :class:`AcquireTimeout`),
  shared by the sync and async drivers so the two cannot drift;
* :class:`Session` — per store and per process: the table of local waiters
  the store's wake-ups are routed to, and the one :class:`Keeper` thread that
  renews every lease and ticket of the process in one store call.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from sluice.errors import AcquireTimeout, LeaseLost, MissingLimitWarning, StoreError
from sluice.limits import counters
from sluice.limits.model import (
    Kind,
    Limit,
    MissingPolicy,
    WaitInfo,
    utc,
    validate_missing,
    validate_names,
    validate_occupy,
    validate_timeout,
)
from sluice.store.base import AcquireRequest, Granted, Queued, Store

__all__ = [
    "Attempt",
    "Keeper",
    "LeaseState",
    "LeaseView",
    "Session",
    "limit_spec",
    "new_request",
    "raise_if_lost",
    "session_for",
]

log = logging.getLogger("sluice")

_MAX_HOLDER = 256


class _RequestIds:
    """Unique request ids, cheaply: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._prefix = uuid.uuid4().hex[:16]
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_request_ids = _RequestIds()


def new_request(
    names: object,
    occupy: object,
    kind: Kind,
    holder: object,
    missing: MissingPolicy,
) -> AcquireRequest:
    """Validate acquire arguments into a request with a fresh id."""
    checked_names = validate_names(names)
    checked_occupy = validate_occupy(occupy)
    if holder is not None and (not isinstance(holder, str) or len(holder) > _MAX_HOLDER):
        from sluice.errors import InvalidRequest

        raise InvalidRequest(
            f"holder must be a str of at most {_MAX_HOLDER} characters, got {holder!r}"
        )
    label = holder if isinstance(holder, str) else threading.current_thread().name
    return AcquireRequest(
        request_id=_request_ids.next(),
        names=checked_names,
        occupy=checked_occupy,
        kind=kind,
        holder=label,
        missing=validate_missing(missing),
    )


# --------------------------------------------------------------------------- attempts


@dataclass
class Attempt:
    """The waiting decisions for one acquire call, independent of sync or async I/O."""

    request: AcquireRequest
    timeout: float | None
    safety_interval: float
    started: float = field(default_factory=time.monotonic)
    last: Queued | None = None
    missing: tuple[str, ...] = ()

    @classmethod
    def start(cls, request: AcquireRequest, timeout: object, safety_interval: float) -> Attempt:
        return cls(request, validate_timeout(timeout), safety_interval)

    @property
    def waited(self) -> float:
        return time.monotonic() - self.started

    def next_sleep(self, outcome: Queued) -> float:
        """After a queued answer: how long to sleep before trying again (or time out)."""
        if self.last is None or self.last.seq != outcome.seq:
            self.request = _with_seq(self.request, outcome.seq)
        self.last = outcome
        self.missing = outcome.missing or self.missing
        # Spread the rare safety re-checks of many idle waiters over time.
        sleep = self.safety_interval * random.uniform(0.8, 1.0)
        if outcome.retry_in is not None:
            sleep = min(sleep, outcome.retry_in)
        if self.timeout is not None:
            left = self.timeout - self.waited
            if left <= 0:
                counters.record_timeout(outcome.blocked_on)
                raise AcquireTimeout(
                    self.request.names,
                    self.timeout,
                    self.waited,
                    outcome.position,
                    outcome.blocked_on,
                )
            sleep = min(sleep, left)
        return max(sleep, 0.0)

    def wait_info(self, outcome: Queued) -> WaitInfo:
        """What an ``on_wait`` callback is told after a queued answer."""
        return WaitInfo(self.request.names, outcome.blocked_on, outcome.position, self.waited)

    def warn_missing(self, missing: tuple[str, ...], stacklevel: int) -> None:
        """Warn once about names that do not exist, if the policy says "warn"."""
        missing = missing or self.missing
        if missing and self.request.missing == "warn":
            warnings.warn(
                MissingLimitWarning(
                    f"limit(s) {', '.join(repr(n) for n in missing)} do not exist; "
                    "acquired the others (missing='warn')"
                ),
                stacklevel=stacklevel + 1,
            )


def _with_seq(request: AcquireRequest, seq: int) -> AcquireRequest:
    return AcquireRequest(
        request.request_id,
        request.names,
        request.occupy,
        request.kind,
        request.holder,
        request.missing,
        seq,
    )


# --------------------------------------------------------------------------- leases


@dataclass
class LeaseState:
    """What a process knows of one of its leases; shared by sync and async leases."""

    id: str
    names: tuple[str, ...]
    occupy: int
    holder: str
    acquired_at: float
    expires_at: float
    lease_ttl: float
    waited: float
    lost: bool = False
    released: bool = False
    lost_reason: str = ""

    @classmethod
    def from_grant(cls, grant: Granted, request: AcquireRequest, waited: float) -> LeaseState:
        assert grant.lease_id is not None and grant.expires_at is not None
        assert grant.lease_ttl is not None
        return cls(
            grant.lease_id,
            grant.names,
            request.occupy,
            request.holder,
            grant.acquired_at,
            grant.expires_at,
            grant.lease_ttl,
            waited,
        )


class Keeper:
    """One thread per process and store that renews every lease and ticket in one call.

    Renewals run every third of the shortest TTL among what is tracked, so a
    live process never lets a lease lapse; a lease the store reports gone is
    marked lost, final.
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
            for state in leases.values():
                if now >= state.expires_at and not state.released and not state.lost:
                    state.lost, state.lost_reason = True, "renewals failed past its TTL"
                    counters.record_lost(state.names)
            return
        for lease_id, state in leases.items():
            if lease_id in renewal.lost_leases and not state.released:
                if not state.lost:
                    counters.record_lost(state.names)
                state.lost = True
                state.lost_reason = state.lost_reason or "expired or revoked (reset, forced delete)"
                self.untrack_lease(lease_id)
            elif lease_id in renewal.expires_at:
                state.expires_at = renewal.expires_at[lease_id]
        if renewal.lost_tickets:
            # The ticket lapsed (e.g. a long pause); its waiter re-queues at its old place.
            self._wake(renewal.lost_tickets)


def raise_if_lost(state: LeaseState, found: bool) -> None:
    """After a release: mark the lease lost if the store no longer had it, and say so."""
    if not found and not state.lost:
        counters.record_lost(state.names)
        state.lost = True
        state.lost_reason = "expired or revoked (reset, forced delete)"
    if state.lost:
        raise LeaseLost(state.id, state.names, state.lost_reason)


class LeaseView:
    """The read-only face of a lease, shared by the sync and async Lease classes."""

    _state: LeaseState

    @property
    def id(self) -> str:
        """The lease id (as shown by inspect())."""
        return self._state.id

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the limits acquired (those that exist and are active)."""
        return self._state.names

    @property
    def occupy(self) -> int:
        """Units held on each limit."""
        return self._state.occupy

    @property
    def holder(self) -> str:
        """The holder label recorded with the lease."""
        return self._state.holder

    @property
    def waited(self) -> float:
        """Seconds spent waiting before the grant."""
        return self._state.waited

    @property
    def acquired_at(self) -> datetime:
        """When the store granted the lease (store clock)."""
        return utc(self._state.acquired_at)

    @property
    def expires_at(self) -> datetime:
        """When the lease lapses unless renewed (the keeper renews it while held)."""
        return utc(self._state.expires_at)

    @property
    def lost(self) -> bool:
        """True once the lease was found expired or revoked; final."""
        return self._state.lost

    @property
    def released(self) -> bool:
        """True once release() was called."""
        return self._state.released

    def __repr__(self) -> str:
        flag = " lost" if self.lost else (" released" if self.released else "")
        return f"<{type(self).__name__} {self.id} {list(self.names)} occupy={self.occupy}{flag}>"


def limit_spec(
    name: object,
    slots: object,
    rate: object,
    burst: object,
    lease_ttl: object,
    active: object,
) -> Limit:
    """Validate create()/ensure() arguments into a Limit."""
    return Limit.build(
        name, slots=slots, rate=rate, burst=burst, lease_ttl=lease_ttl, active=active
    )


# --------------------------------------------------------------------------- sessions


class Session:
    """Per process and store: routes wake-ups to local waiters, and owns the keeper."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._start()
        store.set_wake_handler(self.wake)

    def _start(self) -> None:
        # Also run in a forked child: no thread, waiter or lock state survives fork.
        self._waiters: dict[str, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self.keeper = Keeper(self.store, self.wake)
        self._executor: ThreadPoolExecutor | None = None

    def register(self, request_id: str, waker: Callable[[], None]) -> None:
        with self._lock:
            self._waiters[request_id] = waker

    def unregister(self, request_id: str) -> None:
        with self._lock:
            self._waiters.pop(request_id, None)

    def wake(self, request_ids: Collection[str]) -> None:
        with self._lock:
            wakers = [self._waiters.get(r) for r in request_ids]
        for waker in wakers:
            if waker is not None:
                waker()

    def close(self) -> None:
        """Stop the keeper and worker threads once the store itself is closed."""
        self.keeper.stop()
        with _sessions_lock:
            _sessions.pop(self.store, None)
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def executor(self) -> ThreadPoolExecutor:
        """Worker threads on which async callers run this store's sync steps."""
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
    _request_ids.reset()  # a child must never reuse its parent's ids
    for session in list(_sessions.values()):
        session._start()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
