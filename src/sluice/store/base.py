"""The Store protocol: the contract every backend implements.

A store keeps limits, leases and waiting tickets, and offers a handful of
operations, each of which is ONE atomic step (a transaction, a Lua script):
it decides and answers at once, and never waits. Waiting, wake-ups, timeouts,
cancellation and lease renewal live once, above the store, in
:mod:`sluice.limits` (:mod:`~sluice.limits.waiting`, :mod:`~sluice.limits.session`).

Rules every backend follows:

* **All-or-nothing.** :meth:`Store.acquire` takes ``occupy`` units of every
  named, active limit, or nothing. A failed operation changes nothing.
* **Strict FIFO per limit.** A request may be granted on a limit only if no
  live ticket that arrived earlier (lower ``seq``) waits on that limit. Tickets
  get their ``seq`` from one store-wide counter, so the oldest waiter is at the
  head of every queue it is in, and multi-limit waiters cannot deadlock.
* **Leases and tickets expire.** Each carries ``expires_at`` on the store's
  clock; expired ones are reclaimed inside the atomic steps (no reaper) and a
  reclaimed lease is gone for good: renewing or releasing it reports it lost.
* **Hand-off and push wake-ups.** Every step that may let a waiter through
  (release, grant, abandon, update, enable, disable, reset, delete, reclaim)
  ends by granting, inside the same atomic step, the tickets at the head of
  each changed queue that can now be served — in order, stopping at the first
  that cannot — and tells their processes, through the handler set with
  :meth:`Store.set_wake_handler`, which tickets to look at again (also a new
  head that must learn when its rate token is due). The waiter collects a
  handed-off grant by calling :meth:`Store.acquire` again with the same
  request id. No capacity sits idle while its head waiter could use it, and
  no waiter ever needs to poll.
* **The store's clock is the clock** for lease expiry and rate tokens.
* **Totals.** Each limit counts, inside the same atomic steps and for every
  process, its grants and units granted, each grant's wait (from the ticket's
  ``created_at`` to the grant; 0 for a grant at once), timeouts reported
  through :meth:`Store.abandon`, and the leases it reclaimed because they
  expired or their process died (:class:`~sluice.limits.model.LimitTotals`).
* **Errors** are :mod:`sluice.errors` exceptions; driver errors are translated
  (``raise StoreError(...) from exc``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from sluice.limits.model import Kind, Limit, LimitChanges, LimitStatus, MissingPolicy

__all__ = [
    "AcquireRequest",
    "AsyncStore",
    "ClockOffset",
    "Granted",
    "Queued",
    "Renewal",
    "Store",
    "StoreDiagnosis",
    "ThreadedAsyncStore",
    "WakeHandler",
]

WakeHandler = Callable[[Collection[str]], None]
"""Called (from any thread) with ticket ids whose waiters should try again."""

_T = TypeVar("_T")


# --------------------------------------------------------------------------- wire types
# What the limits client and a store pass each other: requests and answers.


@dataclass(frozen=True)
class AcquireRequest:
    """One attempt to take ``occupy`` units of every named limit, atomically.

    ``request_id`` names the attempt across retries: it is the waiting ticket's id
    while queued and the lease's id once granted, so abandoning it cleans up both.
    """

    request_id: str
    names: tuple[str, ...]
    occupy: int = 1
    kind: Kind = Kind.CONCURRENCY
    holder: str = ""
    missing: MissingPolicy = "raise"
    seq: int | None = None


@dataclass(frozen=True)
class Granted:
    """The request holds its units now (``lease_id`` is None for a rate-only grant)."""

    lease_id: str | None
    names: tuple[str, ...]
    acquired_at: float
    expires_at: float | None
    lease_ttl: float | None
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class Queued:
    """The request waits in line; look again when woken or after ``retry_in`` seconds."""

    request_id: str
    seq: int
    blocked_on: str
    position: int
    retry_in: float | None
    lease_ttl: float
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class Renewal:
    """What a renewal found: leases and tickets now gone, and the new lease expiries."""

    lost_leases: frozenset[str] = frozenset()
    lost_tickets: frozenset[str] = frozenset()
    expires_at: dict[str, float] = field(default_factory=dict)


class ClockOffset:
    """A store's clock minus this host's, estimated from readings of the store's clock.

    A reading taken by the store at ``store_now`` and seen here at ``local_now``
    can only underestimate the offset (the reply spent time on its way, perhaps
    a long time if this process was paused), so the estimate is the largest
    recent reading; it is let down by 1 ms per second so a drifting host clock
    is followed.
    """

    DRIFT = 0.001  # seconds of downward allowance per second since the last estimate

    def __init__(self) -> None:
        self._offset: float | None = None
        self._at = 0.0

    def observe(self, store_now: float, local_now: float) -> None:
        """Take one reading: the store's clock at ``store_now``, seen here at ``local_now``."""
        sample = store_now - local_now
        moment = time.monotonic()
        if self._offset is None:
            self._offset = sample
        else:
            self._offset = max(sample, self._offset - (moment - self._at) * self.DRIFT)
        self._at = moment

    def store_now(self) -> float:
        """The store's clock now, as best known here (this host's clock if never read)."""
        return time.time() + (self._offset or 0.0)


@dataclass(frozen=True)
class StoreDiagnosis:
    """Facts about a store for ``sluice doctor``, beyond what the limits themselves show."""

    backend: str
    """The kind of store, as its URL scheme names it: "sqlite", "memory", "redis" ..."""
    detail: str
    """One line for a person: server or library version, mode, where the data lives."""
    schema_version: int | None
    """The version of Sluice's data layout found in the store; None if it has none yet."""
    schema_current: bool
    """Whether that version is the one this Sluice writes (False when there is none)."""
    expired_leases: int
    """Leases past their expiry that no operation has reclaimed yet."""


@runtime_checkable
class Store(Protocol):
    """A backend holding limits, leases and queues; every method is one atomic step."""

    url: str
    """The store's URL with any password masked: safe to print."""

    safety_interval: float
    """Seconds a waiter may sleep without a wake-up before re-checking (>= 1)."""

    def now(self) -> float:
        """The store's clock, in seconds since the epoch."""

    def create_limit(self, limit: Limit) -> Limit:
        """Create ``limit`` with a full rate bucket; raise LimitExists if the name is taken."""

    def ensure_limit(self, limit: Limit) -> Limit:
        """Create ``limit`` if no limit has its name; return the stored limit either way."""

    def get_limit(self, name: str) -> Limit:
        """Return the named limit; raise LimitNotFound if absent."""

    def list_limits(self) -> list[Limit]:
        """Return every limit, sorted by name."""

    def update_limit(self, name: str, changes: LimitChanges) -> Limit:
        """Change the given fields in place, keeping holders and waiters.

        A changed rate or burst restarts the bucket full. Raises LimitNotFound,
        or InvalidRequest if the result is not a valid limit.
        """

    def set_active(self, name: str, active: bool) -> Limit:
        """Enable or disable a limit; an inactive limit admits everyone and records nothing."""

    def reset_limit(self, name: str) -> int:
        """Revoke every lease holding the limit and refill its bucket; return how many."""

    def delete_limit(self, name: str, force: bool = False) -> None:
        """Delete a limit; raise LimitBusy if leases hold it, unless ``force`` revokes them."""

    def inspect_limit(self, name: str) -> LimitStatus:
        """Return the limit with its live holders, waiters in order, next token time and
        totals (:class:`~sluice.limits.model.LimitTotals`)."""

    def acquire(self, request: AcquireRequest) -> Granted | Queued:
        """Grant the request now, or queue it (keeping ``request.seq`` if given).

        A retry (``request.seq`` set) first collects a grant already handed to it.

        Raises LimitNotFound (listing every missing name) when ``missing`` is
        "raise", and InvalidRequest for an occupy no limit could ever meet or a
        rate request on a limit without a rate; in both cases nothing changes.
        """

    def release(self, lease_id: str) -> bool:
        """Release a lease; return False if it was already gone (released, expired, revoked)."""

    def renew(self, lease_ids: Sequence[str], ticket_ids: Sequence[str]) -> Renewal:
        """Extend this process's leases and tickets by their TTL; report those that are gone."""

    def abandon(self, request_id: str, timed_out_on: str | None = None) -> None:
        """Withdraw a request: drop its ticket and release any lease granted to it.

        ``timed_out_on`` names the limit the request gave up queueing behind
        (AcquireTimeout); that limit's ``totals.timeouts`` counts it, if the
        limit exists. Any other withdrawal (cancelled, interrupted) counts nothing.
        """

    def set_wake_handler(self, handler: WakeHandler) -> None:
        """Deliver this process's wake-ups (ticket ids) to ``handler``."""

    def diagnose(self) -> StoreDiagnosis:
        """Report facts about the store (see :class:`StoreDiagnosis`) without changing it.

        Read-only: reclaims nothing, creates no schema, registers no process; a
        store not yet used reports ``schema_version=None``. Raises
        StoreUnavailable if the store cannot be reached, and StoreError if what
        it holds cannot be read.
        """

    def close(self) -> None:
        """Release connections, listeners and files this process holds."""


class AsyncStore(Protocol):
    """The coroutine twin of :class:`Store`, with the same operations and contract."""

    url: str
    safety_interval: float
    sync: Store

    async def now(self) -> float: ...
    async def create_limit(self, limit: Limit) -> Limit: ...
    async def ensure_limit(self, limit: Limit) -> Limit: ...
    async def get_limit(self, name: str) -> Limit: ...
    async def list_limits(self) -> list[Limit]: ...
    async def update_limit(self, name: str, changes: LimitChanges) -> Limit: ...
    async def set_active(self, name: str, active: bool) -> Limit: ...
    async def reset_limit(self, name: str) -> int: ...
    async def delete_limit(self, name: str, force: bool = False) -> None: ...
    async def inspect_limit(self, name: str) -> LimitStatus: ...
    async def acquire(self, request: AcquireRequest) -> Granted | Queued: ...
    async def release(self, lease_id: str) -> bool: ...
    async def abandon(self, request_id: str, timed_out_on: str | None = None) -> None: ...


class ThreadedAsyncStore:
    """An AsyncStore that runs a sync store's steps on worker threads.

    For backends whose driver has no async API (SQLite, memory). The steps are
    short; running them off the event loop keeps a contended file lock from
    stalling other coroutines.
    """

    def __init__(self, store: Store, executor: ThreadPoolExecutor) -> None:
        self.sync = store
        self.url = store.url
        self.safety_interval = store.safety_interval
        self._executor = executor

    def _run(self, fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def now(self) -> float:
        return await self._run(self.sync.now)

    async def create_limit(self, limit: Limit) -> Limit:
        return await self._run(self.sync.create_limit, limit)

    async def ensure_limit(self, limit: Limit) -> Limit:
        return await self._run(self.sync.ensure_limit, limit)

    async def get_limit(self, name: str) -> Limit:
        return await self._run(self.sync.get_limit, name)

    async def list_limits(self) -> list[Limit]:
        return await self._run(self.sync.list_limits)

    async def update_limit(self, name: str, changes: LimitChanges) -> Limit:
        return await self._run(self.sync.update_limit, name, changes)

    async def set_active(self, name: str, active: bool) -> Limit:
        return await self._run(self.sync.set_active, name, active)

    async def reset_limit(self, name: str) -> int:
        return await self._run(self.sync.reset_limit, name)

    async def delete_limit(self, name: str, force: bool = False) -> None:
        await self._run(self.sync.delete_limit, name, force)

    async def inspect_limit(self, name: str) -> LimitStatus:
        return await self._run(self.sync.inspect_limit, name)

    async def acquire(self, request: AcquireRequest) -> Granted | Queued:
        return await self._run(self.sync.acquire, request)

    async def release(self, lease_id: str) -> bool:
        return await self._run(self.sync.release, lease_id)

    async def abandon(self, request_id: str, timed_out_on: str | None = None) -> None:
        await self._run(self.sync.abandon, request_id, timed_out_on)
