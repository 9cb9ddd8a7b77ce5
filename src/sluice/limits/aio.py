"""The asyncio front door: the same names and arguments as :mod:`sluice.limits.sync`.

Every method of :class:`Limits` is a coroutine. Store steps run through the
store's AsyncStore twin; waiting is an ``asyncio.Event`` set by the process's
shared wake-up listener, so an idle waiter costs no thread and no CPU.

Cancellation is safe at every await: a cancelled waiter leaves the queue, and
a grant that lands after the cancellation is given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

from sluice.errors import LeaseLost
from sluice.limits.client import Attempt, LeaseState, Session, new_request, session_for
from sluice.limits.model import (
    DEFAULT_LEASE_TTL,
    UNSET,
    Granted,
    Kind,
    Limit,
    LimitChanges,
    LimitStatus,
    MissingPolicy,
    Names,
    Queued,
    validate_missing,
    validate_name,
    validate_timeout,
)
from sluice.limits.sync import LeaseView, _raise_if_lost, limit_spec
from sluice.settings import missing_policy, resolve_url
from sluice.store import acquire_store, release_store
from sluice.store.base import AsyncStore, Store, ThreadedAsyncStore

__all__ = ["Lease", "Limits", "concurrency", "default_limits", "rate_limit"]


def _async_store(store: Store, session: Session) -> AsyncStore:
    native = getattr(store, "async_store", None)
    if callable(native):
        result: AsyncStore = native()
        return result
    return ThreadedAsyncStore(store, session.executor())


class Lease(LeaseView):
    """Units held until ``await lease.release()`` (or the ``async with`` block ends)."""

    def __init__(self, state: LeaseState, session: Session, astore: AsyncStore) -> None:
        self._state = state
        self._session = session
        self._astore = astore

    async def release(self) -> None:
        """Give the units back; idempotent. Raises LeaseLost if the lease had been lost."""
        state = self._state
        if state.released:
            return
        state.released = True
        self._session.keeper.untrack_lease(state.id)
        # Shielded: a cancellation here must not leave the units held.
        found = await asyncio.shield(self._astore.release(state.id))
        _raise_if_lost(state, found)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.release()
        else:
            with contextlib.suppress(LeaseLost):
                await self.release()


class _ConcurrencyBlock:
    """``async with limits.concurrency(...) as lease``."""

    def __init__(self, limits: Limits, args: tuple[object, object, object, object, object]) -> None:
        self._limits = limits
        self._args = args
        self._lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        names, occupy, timeout, holder, missing = self._args
        self._lease = await self._limits._lease(names, occupy, timeout, holder, missing, 3)
        return self._lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._lease is not None
        await self._lease.__aexit__(exc_type, exc, tb)


class Limits:
    """The async client for the limits in one store; see :class:`sluice.Limits`."""

    def __init__(self, url: str | None = None, *, missing: MissingPolicy | None = None) -> None:
        self._missing = validate_missing(missing) if missing is not None else None
        self._store: Store = acquire_store(resolve_url(url).url)
        self._session = session_for(self._store)
        self._astore = _async_store(self._store, self._session)
        self._closed = False

    @property
    def url(self) -> str:
        """The store URL, with any password masked."""
        return self._store.url

    # ------------------------------------------------------------- admin

    async def create(
        self,
        name: str,
        *,
        slots: int | None = None,
        rate: float | None = None,
        burst: int | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        active: bool = True,
    ) -> Limit:
        """Create a limit; raise LimitExists if the name is taken."""
        spec = limit_spec(name, slots, rate, burst, lease_ttl, active)
        return await self._astore.create_limit(spec)

    async def ensure(
        self,
        name: str,
        *,
        slots: int | None = None,
        rate: float | None = None,
        burst: int | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        active: bool = True,
    ) -> Limit:
        """Create a limit if missing, else return the existing one untouched."""
        spec = limit_spec(name, slots, rate, burst, lease_ttl, active)
        return await self._astore.ensure_limit(spec)

    async def get(self, name: str) -> Limit:
        """Return the named limit; raise LimitNotFound if it does not exist."""
        return await self._astore.get_limit(validate_name(name))

    async def list(self) -> list[Limit]:
        """Return every limit, sorted by name."""
        return await self._astore.list_limits()

    async def update(
        self,
        name: str,
        *,
        slots: int | object | None = UNSET,
        rate: float | object | None = UNSET,
        burst: int | object | None = UNSET,
        lease_ttl: float | object = UNSET,
    ) -> Limit:
        """Change the given fields in place; holders keep their units."""
        changes = LimitChanges.build(slots=slots, rate=rate, burst=burst, lease_ttl=lease_ttl)
        return await self._astore.update_limit(validate_name(name), changes)

    async def enable(self, name: str) -> Limit:
        """Make a limit count again."""
        return await self._astore.set_active(validate_name(name), True)

    async def disable(self, name: str) -> Limit:
        """Make a limit admit everyone without recording anything."""
        return await self._astore.set_active(validate_name(name), False)

    async def reset(self, name: str) -> int:
        """Release every holder of a limit; return how many leases were released."""
        return await self._astore.reset_limit(validate_name(name))

    async def delete(self, name: str, force: bool = False) -> None:
        """Delete a limit; LimitBusy while it has holders unless ``force``."""
        if not isinstance(force, bool):
            from sluice.errors import InvalidRequest

            raise InvalidRequest(f"force must be a bool, got {force!r}")
        await self._astore.delete_limit(validate_name(name), force)

    async def inspect(self, name: str) -> LimitStatus:
        """Return a snapshot of a limit: units in use, holders, waiters, next token."""
        return await self._astore.inspect_limit(validate_name(name))

    # ------------------------------------------------------------- acquisition

    async def acquire(
        self,
        names: Names,
        occupy: int = 1,
        timeout: float | None = None,
        *,
        holder: str | None = None,
        missing: MissingPolicy | None = None,
    ) -> Lease:
        """Take ``occupy`` units of every named limit, all or nothing, waiting in line."""
        return await self._lease(names, occupy, timeout, holder, missing, 2)

    def concurrency(
        self,
        names: Names,
        occupy: int = 1,
        timeout: float | None = None,
        *,
        holder: str | None = None,
        missing: MissingPolicy | None = None,
    ) -> _ConcurrencyBlock:
        """``async with limits.concurrency("db") as lease:`` — hold units for the block."""
        new_request(names, occupy, Kind.CONCURRENCY, holder, self._policy(missing))
        validate_timeout(timeout)
        return _ConcurrencyBlock(self, (names, occupy, timeout, holder, missing))

    async def rate_limit(
        self,
        names: Names,
        occupy: int = 1,
        timeout: float | None = None,
        *,
        holder: str | None = None,
        missing: MissingPolicy | None = None,
    ) -> None:
        """Wait until ``occupy`` rate units of every named limit are granted."""
        await self._acquire(names, occupy, timeout, holder, missing, Kind.RATE, 2)

    def _policy(self, missing: object) -> MissingPolicy:
        if missing is not None:
            return validate_missing(missing)
        return self._missing if self._missing is not None else missing_policy()

    async def _lease(
        self,
        names: object,
        occupy: object,
        timeout: object,
        holder: object,
        missing: object,
        stacklevel: int,
    ) -> Lease:
        state = await self._acquire(
            names, occupy, timeout, holder, missing, Kind.CONCURRENCY, stacklevel + 1
        )
        assert state is not None
        return Lease(state, self._session, self._astore)

    async def _acquire(
        self,
        names: object,
        occupy: object,
        timeout: object,
        holder: object,
        missing: object,
        kind: Kind,
        stacklevel: int,
    ) -> LeaseState | None:
        if holder is None:
            task = asyncio.current_task()
            holder = task.get_name() if task is not None else threading.current_thread().name
        request = new_request(names, occupy, kind, holder, self._policy(missing))
        astore, session = self._astore, self._session
        attempt = Attempt.start(request, timeout, astore.safety_interval)
        loop = asyncio.get_running_loop()
        event = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(event.set)

        session.register(request.request_id, wake)  # before the first attempt: no wake-up lost
        queued = False
        step: asyncio.Future[Granted | Queued] | None = None
        try:
            while True:
                event.clear()
                step = asyncio.ensure_future(astore.acquire(attempt.request))
                outcome = await asyncio.shield(step)
                if isinstance(outcome, Granted):
                    break
                sleep = attempt.next_sleep(outcome)
                if not queued:
                    queued = True
                    session.keeper.track_ticket(request.request_id, outcome.lease_ttl)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), sleep)
            state = None
            if outcome.lease_id is not None:
                state = LeaseState.from_grant(outcome, request, attempt.waited)
                session.keeper.track_lease(state)
        except BaseException:
            session.keeper.untrack_lease(request.request_id)
            await _withdraw(astore, request.request_id, step)
            raise
        finally:
            session.unregister(request.request_id)
            if queued:
                session.keeper.untrack_ticket(request.request_id)
        attempt.warn_missing(outcome.missing, stacklevel + 1)
        return state

    # ------------------------------------------------------------- lifecycle

    async def aclose(self) -> None:
        """Stop using the store; the last Limits on a URL closes its connection."""
        if not self._closed:
            self._closed = True
            closed = await asyncio.get_running_loop().run_in_executor(
                self._session.executor(), release_store, self._store
            )
            if closed:
                self._session.close()

    async def __aenter__(self) -> Limits:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"aio.Limits({self.url!r})"


async def _withdraw(
    astore: AsyncStore, request_id: str, step: asyncio.Future[Granted | Queued] | None
) -> None:
    """Leave the queue and give back a late grant, even while being cancelled."""

    async def withdraw() -> None:
        if step is not None and not step.done():
            with contextlib.suppress(BaseException):
                await step  # let the in-flight attempt finish, then undo it
        await astore.abandon(request_id)

    cleanup = asyncio.ensure_future(withdraw())
    with contextlib.suppress(BaseException):
        await asyncio.shield(cleanup)


_default: Limits | None = None
_default_lock = threading.Lock()


def default_limits() -> Limits:
    """The process-wide async Limits used by the module-level helpers."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Limits()
        return _default


def concurrency(
    names: Names,
    occupy: int = 1,
    timeout: float | None = None,
    *,
    holder: str | None = None,
    missing: MissingPolicy | None = None,
) -> _ConcurrencyBlock:
    """``async with concurrency("db"):`` on the default store."""
    return default_limits().concurrency(names, occupy, timeout, holder=holder, missing=missing)


async def rate_limit(
    names: Names,
    occupy: int = 1,
    timeout: float | None = None,
    *,
    holder: str | None = None,
    missing: MissingPolicy | None = None,
) -> None:
    """Wait for rate units on the default store."""
    await default_limits()._acquire(names, occupy, timeout, holder, missing, Kind.RATE, 2)
