"""The Store protocol: the contract every backend implements.

A store keeps limits, leases and waiting tickets, and offers a handful of
operations, each of which is ONE atomic step (a transaction, a Lua script):
it decides and answers at once, and never waits. Waiting, wake-ups, timeouts,
cancellation and lease renewal live once, above the store, in
:mod:`sluice.limits` (:mod:`~sluice.limits.session` batches every acquire,
release and withdrawal of a process into few :meth:`Store.exchange` steps).

Rules every backend follows:

* **All-or-nothing.** Each grant takes ``occupy`` units of every named, active
  limit, or nothing. A refused request changes nothing; the other parts of the
  same :class:`Exchange` still happen.
* **Tickets stand for many grants.** A request that cannot be granted at once
  (wholly) opens a *ticket*: one place in line, wanting ``count`` grants. A
  process keeps few tickets however many of its callers wait (the client
  aggregates identical requests), so store work does not grow with the backlog.
* **Strict FIFO per limit.** A grant may be made on a limit only if no live
  ticket that arrived earlier (lower ``seq``) still wants a grant on that limit.
  Tickets get their ``seq`` from one store-wide counter, so the oldest waiter is
  at the head of every queue it is in, and multi-limit waiters cannot deadlock.
  A ticket grows (``AcquireRequest.join``) only while nobody queued after it.
* **Leases and tickets expire.** Each carries ``expires_at`` on the store's
  clock; expired ones are reclaimed inside the atomic steps (no reaper) and a
  reclaimed lease is gone for good: renewing or releasing it reports it lost.
* **Hand-off and push wake-ups.** Every step that may let a waiter through
  (release, withdrawal, grant, update, enable, disable, reset, delete, reclaim)
  ends by granting, inside the same atomic step, the tickets at the head of
  each changed queue that can now be served — in order, as many grants as
  each head wants and fit, stopping at the first that cannot — and tells their
  processes, through the handler set with :meth:`Store.set_wake_handler`,
  which tickets to look at again (also a new head that must learn when its rate
  token is due). No capacity sits idle while its head waiter could use it, and
  no waiter ever needs to poll.
* **Claims.** A grant made to the caller of a step (in its :class:`Exchanged`)
  is the caller's at once. A grant handed to another process's ticket waits to
  be *claimed*: it expires :data:`CLAIM_WINDOW` seconds after the hand-off
  unless that process asks about the ticket (:class:`Ask`) sooner, which claims
  it (its expiry becomes a full lease TTL). A process uses a grant only once
  claimed, so a grant that lapses unclaimed was never used: its units go to the
  next waiter, and its ticket gets the grant back, keeping its place, but is
  *stalled* (skipped by hand-offs) until its process asks about it again.
* **The store's clock is the clock** for lease expiry and rate tokens.
* **Totals.** Each limit counts, inside the same atomic steps and for every
  process, its grants and units granted, each grant's wait (from the ticket's
  ``created_at`` to the grant; 0 for a grant at once), timeouts reported
  through :class:`Withdrawal`, and the leases it reclaimed because they expired
  (claimed) or their process died (:class:`~sluice.limits.model.LimitTotals`).
* **Audit.** The admin steps (update, enable, disable, reset, delete) leave an
  :class:`~sluice.store.audit.AdminRecord` (who, what, when on the store's clock), in
  the same transaction where the backend has one (SQLite, PostgreSQL), else right after
  the step succeeded (Redis); see :mod:`sluice.store.audit`.
* **Errors** are :mod:`sluice.errors` exceptions; driver errors are translated
  (``raise StoreError(...) from exc``).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from sluice.errors import SluiceError
from sluice.limits.model import Kind, Limit, LimitChanges, LimitStatus, MissingPolicy
from sluice.store.audit import AdminRecord

__all__ = [
    "CLAIM_WINDOW",
    "AcquireRequest",
    "Ask",
    "AsyncStore",
    "ClockOffset",
    "Exchange",
    "Exchanged",
    "Granted",
    "HeldSpan",
    "Queued",
    "Renewal",
    "Store",
    "StoreDiagnosis",
    "ThreadedAsyncStore",
    "WakeHandler",
    "Withdrawal",
]

CLAIM_WINDOW = 2.0
"""Seconds a grant handed to another process's ticket waits to be claimed."""

WakeHandler = Callable[[Collection[str]], None]
"""Called (from any thread) with ticket ids whose waiters should try again, and the ids
of leases of the process that a reset or forced delete revoked."""

_T = TypeVar("_T")


# --------------------------------------------------------------------------- wire types
# What the limits client and a store pass each other: requests and answers.


@dataclass(frozen=True)
class AcquireRequest:
    """Ask for ``count`` grants of ``occupy`` units of every named limit, each all or nothing.

    ``request_id`` is the id of the *ticket* the request opens if it must wait: one
    place in line that stands for ``count`` grants, served in order. The grants it
    receives are leases named ``<ticket id>.<n>`` (n = 1, 2, ... in grant order).
    With ``join``, the request adds ``count`` to that ticket of the same process and
    the same request instead, if that ticket still waits and is still the last in
    every queue it is in; otherwise it opens its own ticket, so nobody who queued
    after ``join`` is overtaken.
    """

    request_id: str
    names: tuple[str, ...]
    occupy: int = 1
    kind: Kind = Kind.CONCURRENCY
    holder: str = ""
    missing: MissingPolicy = "raise"
    count: int = 1
    join: str | None = None


@dataclass(frozen=True)
class Ask:
    """Look again at a ticket of this process: claim what was handed to it, serve it if
    it can be served now, and say where it stands.

    If the ticket is gone (it expired, or every grant was handed out and one lapsed
    unclaimed), the store opens it again at ``seq``, its old place, for ``count``
    grants less those claimed in this step.
    """

    ticket_id: str
    request: AcquireRequest
    seq: int
    count: int


@dataclass(frozen=True)
class Withdrawal:
    """Take back ``count`` (None: all) of a ticket's wanted grants: their waiters gave up.

    What the ticket no longer wants beyond what it still waits for comes out of the
    grants handed to it and not yet claimed (they were meant for those waiters and
    go back, never used). ``timed_out_on`` names the limit they timed out queueing
    behind (AcquireTimeout); that limit's ``totals.timeouts`` counts each withdrawn
    grant. A ticket with nothing left wanted leaves every queue.
    """

    ticket_id: str
    count: int | None = None
    timed_out_on: str | None = None


@dataclass(frozen=True)
class Exchange:
    """Everything one process has for the store at one moment, done as ONE atomic step.

    In this order: withdrawals, releases, the hand-off of what they freed, asks,
    then new requests (which queue behind everyone already waiting).
    """

    releases: tuple[str, ...] = ()
    withdrawals: tuple[Withdrawal, ...] = ()
    asks: tuple[Ask, ...] = ()
    requests: tuple[AcquireRequest, ...] = ()


@dataclass(frozen=True)
class Granted:
    """A grant: its units are held now (``lease_id`` is None for a rate-only grant)."""

    lease_id: str | None
    names: tuple[str, ...]
    acquired_at: float
    expires_at: float | None
    lease_ttl: float | None
    missing: tuple[str, ...] = ()
    ticket_id: str = ""
    """The ticket (or request) it was granted to."""


@dataclass(frozen=True)
class Queued:
    """A ticket waits in line for ``wanted`` more grants; look again when woken or after
    ``retry_in`` seconds (None: only when woken, or after the safety interval)."""

    request_id: str
    seq: int
    blocked_on: str
    position: int
    """The 1-based place of the ticket's first wanted grant in ``blocked_on``'s queue,
    counting every grant wanted ahead of it."""
    retry_in: float | None
    lease_ttl: float
    missing: tuple[str, ...] = ()
    wanted: int = 1


@dataclass(frozen=True)
class Exchanged:
    """What one :class:`Exchange` did, for the process that sent it."""

    released: dict[str, bool] = field(default_factory=dict)
    """Per lease id released: True if it was held, False if it was already gone."""
    grants: tuple[Granted, ...] = ()
    """Every grant made to this process's requests and tickets in this step (claimed:
    its units are the caller's to use), in grant order per ticket."""
    queued: dict[str, Queued] = field(default_factory=dict)
    """Per ticket asked about or opened (or joined) in this step that still waits."""
    refused: dict[str, SluiceError] = field(default_factory=dict)
    """Per request id (or asked ticket id) the store refused: nothing changed for it."""
    joined: dict[str, str] = field(default_factory=dict)
    """Per request id that joined an existing ticket: that ticket's id."""
    missing: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per request id: names that do not exist and were skipped (missing="warn"/"ignore")."""


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
    write_error: str | None = None
    """Why this process could not write to the store, if it tried and could not (a
    read-only file or database, a read-only replica); None if writes work or were not
    tried (a store not yet created)."""


@dataclass(frozen=True)
class HeldSpan:
    """A stretch of time during which one lease held units of one limit, as the store saw it."""

    limit: str
    holder: str
    """The lease's holder label (a flow task run's names its task, flow and flow run)."""
    units: int
    acquired_at: float
    released_at: float | None
    """When the lease ended (released, reclaimed or revoked); None while it is held."""
    lease_id: str


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
        """Revoke every lease holding the limit and refill its bucket; return how many.

        Each revoked lease's process is woken with the lease's id among its wake-ups,
        so the holder learns at once, not at its next renewal.
        """

    def delete_limit(self, name: str, force: bool = False) -> None:
        """Delete a limit; raise LimitBusy if leases hold it, unless ``force`` revokes them
        (their processes are woken with their ids, as by :meth:`reset_limit`)."""

    def inspect_limit(self, name: str) -> LimitStatus:
        """Return the limit with its live holders, waiters in order, next token time and
        totals (:class:`~sluice.limits.model.LimitTotals`)."""

    def exchange(self, batch: Exchange) -> Exchanged:
        """Do everything in ``batch`` for this process as ONE atomic step (see :class:`Exchange`).

        Withdrawals take back wanted grants (nothing if the ticket is gone).
        Releases free leases (``released`` says which were still held). Asks
        claim the grants handed to the asked tickets, serve them if they head
        their queues and fit, and report where they stand; an asked ticket that is
        gone is opened again at its old ``seq``. Requests are granted at once as
        far as nobody waits ahead and capacity allows, and the rest queue as one
        ticket (or join one). Every change ends with a hand-off. A request or ask
        that cannot be met at all is refused alone, in ``refused``: LimitNotFound
        (listing every missing name) when ``missing`` is "raise", InvalidRequest for
        an occupy no limit could ever meet or a rate request on a limit without a
        rate.
        """

    def renew(self, lease_ids: Sequence[str], ticket_ids: Sequence[str]) -> Renewal:
        """Extend this process's leases and tickets by their TTL; report those that are gone.

        A renewed ticket that was stalled (a grant handed to it lapsed) is served again.
        """

    def held_spans(self, names: Sequence[str], since: float, until: float) -> list[HeldSpan]:
        """Every lease that held units of these limits at some time in [since, until]: the
        ended ones the store kept on record and those held now, by acquisition time."""

    def record_admin(self, name: str, action: str, changes: Mapping[str, Any]) -> AdminRecord:
        """Put an admin action on limit ``name`` on record, as done now (the store's clock)
        by :func:`~sluice.store.audit.current_actor`; the admin steps record themselves."""

    def admin_history(self, name: str, count: int = 100) -> list[AdminRecord]:
        """The newest ``count`` (1 to :data:`~sluice.store.audit.ADMIN_KEEP`) admin records
        of limit ``name``, newest first; a deleted limit's records stay."""

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
        # The caller's context goes along (who an admin step is recorded as, for one).
        context = contextvars.copy_context()
        return loop.run_in_executor(self._executor, functools.partial(context.run, fn, *args))

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
