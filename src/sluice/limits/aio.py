"""The asyncio front door: the same names and arguments as :mod:`sluice.limits.sync`.

Every method of :class:`Limits` is a coroutine. Store steps run through the
store's AsyncStore twin; waiting is an ``asyncio.Event`` set by the process's
shared wake-up listener, so an idle waiter costs no thread and no CPU.

Cancellation is safe at every await: a cancelled waiter leaves the queue, and
a grant that lands after the cancellation is given back.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from types import TracebackType

from sluice.errors import InvalidRequest, LeaseLost
from sluice.limits.attempt import limit_spec, new_request, warn_missing
from sluice.limits.lease import LeaseState, LeaseView
from sluice.limits.model import (
    DEFAULT_LEASE_TTL,
    UNSET,
    Kind,
    Limit,
    LimitChanges,
    LimitStatus,
    MissingPolicy,
    Names,
    WaitInfo,
    validate_missing,
    validate_name,
    validate_timeout,
)
from sluice.limits.session import Session, session_for
from sluice.limits.waiting import (
    async_store_for,  # unasync: remove
    close_store_async,
    default_holder_async,
    release_lease_async,
    wait_for_grant_async,
)
from sluice.settings import missing_policy, resolve_url
from sluice.store import acquire_store
from sluice.store.base import AsyncStore, Store

__all__ = ["Lease", "Limits", "concurrency", "default_limits", "rate_limit"]


class Lease(LeaseView):
    """Units held until ``await lease.release()`` (or the ``async with`` block ends)."""

    def __init__(self, state: LeaseState, session: Session, astore: AsyncStore) -> None:
        self._state = state
        self._session = session
        self._astore = astore

    async def release(self) -> None:
        """Give the units back; idempotent. Raises LeaseLost if the lease had been lost."""
        if not self._state.released:
            self._state.released = True
            await release_lease_async(self._session, self._state)

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
    """A client for the limits in one store: admin operations and acquisition.

    ``Limits()`` uses ``SLUICE_URL``, else ``sqlite:///~/.sluice/sluice.db``;
    ``Limits("memory://")`` or ``Limits("sqlite:////path/to.db")`` name a store.
    Every ``Limits`` on the same URL in a process shares one store connection,
    wake-up listener and lease keeper.
    """

    def __init__(self, url: str | None = None, *, missing: MissingPolicy | None = None) -> None:
        self._missing = validate_missing(missing) if missing is not None else None
        self._store: Store = acquire_store(resolve_url(url).url)
        self._session = session_for(self._store)
        self._astore = async_store_for(self._store, self._session)  # unasync: remove
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
        on_wait: Callable[[WaitInfo], None] | None = None,
    ) -> Lease:
        """Take ``occupy`` units of every named limit, all or nothing, waiting in line.

        ``on_wait``, if given, is called with a :class:`WaitInfo` (the limit blocking
        the request and its queue position) after each answer that leaves the request
        queued, from the waiting thread or task; it must return quickly, and an error
        it raises withdraws the request and propagates.
        """
        if on_wait is not None and not callable(on_wait):
            raise InvalidRequest(f"on_wait must be None or a callable, got {on_wait!r}")
        return await self._lease(names, occupy, timeout, holder, missing, 2, on_wait)

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
        if self._missing is None:
            self._missing = missing_policy()  # SLUICE_MISSING_LIMIT, read on first use
        return self._missing

    async def _lease(
        self,
        names: object,
        occupy: object,
        timeout: object,
        holder: object,
        missing: object,
        stacklevel: int,
        on_wait: Callable[[WaitInfo], None] | None = None,
    ) -> Lease:
        state = await self._acquire(
            names, occupy, timeout, holder, missing, Kind.CONCURRENCY, stacklevel + 1, on_wait
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
        on_wait: Callable[[WaitInfo], None] | None = None,
    ) -> LeaseState | None:
        label = default_holder_async() if holder is None else holder
        request = new_request(names, occupy, kind, label, self._policy(missing))
        waiter = await wait_for_grant_async(self._astore, self._session, request, timeout, on_wait)
        warn_missing(request, waiter.missing, stacklevel + 1)
        return waiter.state

    # ------------------------------------------------------------- lifecycle

    async def aclose(self) -> None:
        """Stop using the store; the last Limits on a URL closes its connection."""
        if not self._closed:
            self._closed = True
            await close_store_async(self._store, self._session)

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


_default: Limits | None = None
_default_lock = threading.Lock()


def default_limits() -> Limits:
    """The process-wide Limits (from SLUICE_URL) used by the module-level helpers."""
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
