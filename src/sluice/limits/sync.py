"""The synchronous front door: :class:`Limits`, :class:`Lease` and module-level helpers."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import datetime
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
    utc,
    validate_missing,
    validate_name,
    validate_timeout,
)
from sluice.settings import missing_policy, resolve_url
from sluice.store import acquire_store, release_store
from sluice.store.base import Store

__all__ = ["Lease", "Limits", "concurrency", "default_limits", "rate_limit"]


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


class Lease(LeaseView):
    """Units held on one or more limits until :meth:`release` (or the ``with`` block ends)."""

    def __init__(self, state: LeaseState, session: Session) -> None:
        self._state = state
        self._session = session

    def release(self) -> None:
        """Give the units back; idempotent. Raises LeaseLost if the lease had been lost."""
        state = self._state
        if state.released:
            return
        state.released = True
        self._session.keeper.untrack_lease(state.id)
        found = self._session.store.release(state.id)
        _raise_if_lost(state, found)

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
                self.release()  # the body's own error is the one to see


def _releaser(signal: threading.Lock) -> Callable[[], None]:
    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # already woken
            signal.release()

    return wake


def _raise_if_lost(state: LeaseState, found: bool) -> None:
    if not found and not state.lost:
        state.lost = True
        state.lost_reason = "expired or revoked (reset, forced delete)"
    if state.lost:
        raise LeaseLost(state.id, state.names, state.lost_reason)


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


class _ConcurrencyBlock:
    """``with limits.concurrency(...) as lease``: acquire on entry, release on exit."""

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
        return self._store.create_limit(limit_spec(name, slots, rate, burst, lease_ttl, active))

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
        return self._store.ensure_limit(limit_spec(name, slots, rate, burst, lease_ttl, active))

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
            from sluice.errors import InvalidRequest

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
    ) -> Lease:
        """Take ``occupy`` units of every named limit, all or nothing, waiting in line."""
        return self._lease(names, occupy, timeout, holder, missing, 2)

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
        # Bad arguments fail here, at the call, not later at `with`.
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
        """Wait until ``occupy`` rate units of every named limit are granted; nothing to release."""
        self._acquire(names, occupy, timeout, holder, missing, Kind.RATE, 2)

    def _policy(self, missing: object) -> MissingPolicy:
        if missing is not None:
            return validate_missing(missing)
        return self._missing if self._missing is not None else missing_policy()

    def _lease(
        self,
        names: object,
        occupy: object,
        timeout: object,
        holder: object,
        missing: object,
        stacklevel: int,
    ) -> Lease:
        state = self._acquire(
            names, occupy, timeout, holder, missing, Kind.CONCURRENCY, stacklevel + 1
        )
        assert state is not None
        return Lease(state, self._session)

    def _acquire(
        self,
        names: object,
        occupy: object,
        timeout: object,
        holder: object,
        missing: object,
        kind: Kind,
        stacklevel: int,
    ) -> LeaseState | None:
        request = new_request(names, occupy, kind, holder, self._policy(missing))
        store, session = self._store, self._session
        attempt = Attempt.start(request, timeout, store.safety_interval)
        # Listening before the first attempt, so no wake-up can slip by unseen.
        # A held lock is the cheapest one-shot signal: wake() releases it,
        # and acquiring it again both waits for and consumes the wake-up.
        signal = threading.Lock()
        signal.acquire()
        session.register(request.request_id, _releaser(signal))
        queued = False
        try:
            outcome = store.acquire(attempt.request)
            while not isinstance(outcome, Granted):
                sleep = attempt.next_sleep(outcome)
                if not queued:
                    queued = True
                    session.keeper.track_ticket(request.request_id, outcome.lease_ttl)
                signal.acquire(timeout=sleep)
                outcome = store.acquire(attempt.request)
            state = None
            if outcome.lease_id is not None:
                state = LeaseState.from_grant(outcome, request, attempt.waited)
                session.keeper.track_lease(state)
        except BaseException:
            session.keeper.untrack_lease(request.request_id)
            # Timed out, interrupted or failed: leave the queue, and give back any
            # grant that landed after all.
            with contextlib.suppress(Exception):
                store.abandon(request.request_id)
            raise
        finally:
            session.unregister(request.request_id)
            if queued:
                session.keeper.untrack_ticket(request.request_id)
        attempt.warn_missing(outcome.missing, stacklevel + 1)
        return state

    # ------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Stop using the store; the last Limits on a URL closes its connection."""
        if not self._closed:
            self._closed = True
            if release_store(self._store):
                self._session.close()

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
    """The process-wide Limits used by the module-level helpers (from SLUICE_URL)."""
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
