"""The synchronous front door: :class:`Limits`, :class:`Lease` and module-level helpers.

GENERATED from aio.py by scripts/unasync.py: edit aio.py, then run the script.
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
    close_store,
    default_holder,
    release_lease,
    wait_for_grant,
)
from sluice.settings import missing_policy, resolve_url
from sluice.store import acquire_store
from sluice.store.base import Store

__all__ = ["Lease", "Limits", "concurrency", "default_limits", "rate_limit"]


class Lease(LeaseView):
    """Units held until ``lease.release()`` (or the ``with`` block ends)."""

    def __init__(self, state: LeaseState, session: Session, store: Store) -> None:
        self._state = state
        self._session = session
        self._store = store

    def release(self) -> None:
        """Give the units back; idempotent. Raises LeaseLost if the lease had been lost."""
        if not self._state.released:
            self._state.released = True
            release_lease(self._session, self._state)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.release()
        else:
            with contextlib.suppress(LeaseLost):
                self.release()


class _ConcurrencyBlock:
    """``with limits.concurrency(...) as lease``."""

    def __init__(self, limits: Limits, args: tuple[object, object, object, object, object]) -> None:
        self._limits = limits
        self._args = args
        self._lease: Lease | None = None

    def __enter__(self) -> Lease:
        names, occupy, timeout, holder, missing = self._args
        self._lease = self._limits._lease(names, occupy, timeout, holder, missing, 3)
        return self._lease

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._lease is not None
        self._lease.__exit__(exc_type, exc, tb)


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
        self._closed = False

    @property
    def url(self) -> str:
        """The store URL, with any password masked."""
        return self._store.url

    # ------------------------------------------------------------- admin

    def create(
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
        return self._store.create_limit(spec)

    def ensure(
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
        return self._store.ensure_limit(spec)

    def get(self, name: str) -> Limit:
        """Return the named limit; raise LimitNotFound if it does not exist."""
        return self._store.get_limit(validate_name(name))

    def list(self) -> list[Limit]:
        """Return every limit, sorted by name."""
        return self._store.list_limits()

    def update(
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
        return self._store.update_limit(validate_name(name), changes)

    def enable(self, name: str) -> Limit:
        """Make a limit count again."""
        return self._store.set_active(validate_name(name), True)

    def disable(self, name: str) -> Limit:
        """Make a limit admit everyone without recording anything."""
        return self._store.set_active(validate_name(name), False)

    def reset(self, name: str) -> int:
        """Release every holder of a limit; return how many leases were released."""
        return self._store.reset_limit(validate_name(name))

    def delete(self, name: str, force: bool = False) -> None:
        """Delete a limit; LimitBusy while it has holders unless ``force``."""
        if not isinstance(force, bool):
            raise InvalidRequest(f"force must be a bool, got {force!r}")
        self._store.delete_limit(validate_name(name), force)

    def inspect(self, name: str) -> LimitStatus:
        """Return a snapshot of a limit: units in use, holders, waiters, next token."""
        return self._store.inspect_limit(validate_name(name))

    # ------------------------------------------------------------- acquisition

    def acquire(
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
        return self._lease(names, occupy, timeout, holder, missing, 2, on_wait)

    def concurrency(
        self,
        names: Names,
        occupy: int = 1,
        timeout: float | None = None,
        *,
        holder: str | None = None,
        missing: MissingPolicy | None = None,
    ) -> _ConcurrencyBlock:
        """``with limits.concurrency("db") as lease:`` — hold units for the block."""
        new_request(names, occupy, Kind.CONCURRENCY, holder, self._policy(missing))
        validate_timeout(timeout)
        return _ConcurrencyBlock(self, (names, occupy, timeout, holder, missing))

    def rate_limit(
        self,
        names: Names,
        occupy: int = 1,
        timeout: float | None = None,
        *,
        holder: str | None = None,
        missing: MissingPolicy | None = None,
    ) -> None:
        """Wait until ``occupy`` rate units of every named limit are granted."""
        self._acquire(names, occupy, timeout, holder, missing, Kind.RATE, 2)

    def _policy(self, missing: object) -> MissingPolicy:
        if missing is not None:
            return validate_missing(missing)
        if self._missing is None:
            self._missing = missing_policy()  # SLUICE_MISSING_LIMIT, read on first use
        return self._missing

    def _lease(
        self,
        names: object,
        occupy: object,
        timeout: object,
        holder: object,
        missing: object,
        stacklevel: int,
        on_wait: Callable[[WaitInfo], None] | None = None,
    ) -> Lease:
        state = self._acquire(
            names, occupy, timeout, holder, missing, Kind.CONCURRENCY, stacklevel + 1, on_wait
        )
        assert state is not None
        return Lease(state, self._session, self._store)

    def _acquire(
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
        label = default_holder() if holder is None else holder
        request = new_request(names, occupy, kind, label, self._policy(missing))
        waiter = wait_for_grant(self._store, self._session, request, timeout, on_wait)
        warn_missing(request, waiter.missing, stacklevel + 1)
        return waiter.state

    # ------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Stop using the store; the last Limits on a URL closes its connection."""
        if not self._closed:
            self._closed = True
            close_store(self._store, self._session)

    def __enter__(self) -> Limits:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Limits({self.url!r})"


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
    """``with concurrency("db"):`` on the default store."""
    return default_limits().concurrency(names, occupy, timeout, holder=holder, missing=missing)


def rate_limit(
    names: Names,
    occupy: int = 1,
    timeout: float | None = None,
    *,
    holder: str | None = None,
    missing: MissingPolicy | None = None,
) -> None:
    """Wait for rate units on the default store."""
    default_limits()._acquire(names, occupy, timeout, holder, missing, Kind.RATE, 2)
