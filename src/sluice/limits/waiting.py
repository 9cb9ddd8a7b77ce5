"""The only code that differs between the sync and async front doors: how to wait.

Each operation here has a sync function and an ``_async`` twin of the same
name. :mod:`sluice.limits.aio` calls the twins; ``scripts/unasync.py`` turns it
into :mod:`sluice.limits.sync`, which calls the sync ones. Both drivers take
their decisions from the same :class:`~sluice.limits.attempt.Attempt`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable

from sluice.errors import AcquireTimeout, StoreError, StoreUnavailable
from sluice.limits import counters
from sluice.limits.attempt import Attempt
from sluice.limits.lease import LeaseState, raise_if_lost
from sluice.limits.model import WaitInfo
from sluice.limits.session import Session
from sluice.store import release_store
from sluice.store.base import AcquireRequest, AsyncStore, Granted, Queued, Store, ThreadedAsyncStore

__all__ = [
    "aclose_async_store",
    "async_store_for",
    "close_store",
    "close_store_async",
    "default_holder",
    "default_holder_async",
    "release_lease",
    "release_lease_async",
    "wait_for_grant",
    "wait_for_grant_async",
]


def async_store_for(store: Store, session: Session) -> AsyncStore:
    """The store's native async twin if it has one, else its steps run on worker threads."""
    native = getattr(store, "async_store", None)
    if callable(native):
        result: AsyncStore = native()
        return result
    return ThreadedAsyncStore(store, session.executor())


async def aclose_async_store(astore: AsyncStore) -> None:
    """Close the connections a native async store holds on the running event loop."""
    closer = getattr(astore, "aclose", None)
    if callable(closer):
        await closer()


# --------------------------------------------------------------------------- holder labels


def default_holder() -> str:
    """The current thread's name."""
    return threading.current_thread().name


def default_holder_async() -> str:
    """The current asyncio task's name."""
    task = asyncio.current_task()
    return task.get_name() if task is not None else threading.current_thread().name


# --------------------------------------------------------------------------- waiting


def wait_for_grant(
    store: Store,
    session: Session,
    request: AcquireRequest,
    timeout: object,
    on_wait: Callable[[WaitInfo], None] | None = None,
) -> tuple[Granted, LeaseState | None, Attempt]:
    """Try, sleep until woken or due, try again; withdraw on any error or interrupt."""
    attempt = Attempt.start(request, timeout, store.safety_interval)
    # Listening before the first attempt, so no wake-up can slip by unseen. A
    # held lock is the cheapest one-shot signal: a wake-up releases it, and
    # acquiring it again both waits for and consumes the wake-up.
    signal = threading.Lock()
    signal.acquire()
    session.register(request.request_id, _releaser(signal))
    queued = False
    try:
        outcome = store.acquire(attempt.request)
        while not isinstance(outcome, Granted):
            sleep = attempt.next_sleep(outcome)
            if on_wait is not None:
                on_wait(attempt.wait_info(outcome))
            if not queued:
                queued = True
                session.keeper.track_ticket(request.request_id, outcome.lease_ttl)
            signal.acquire(timeout=sleep)
            try:
                outcome = store.acquire(attempt.request)
            except StoreUnavailable as exc:
                outcome = attempt.still_waiting(exc)
        state = _track(session, request, outcome, attempt)
    except BaseException:
        # Timed out, interrupted or failed: leave the queue, and give back any
        # grant that landed after all.
        session.keeper.untrack_lease(request.request_id)
        with contextlib.suppress(Exception):
            store.abandon(request.request_id, _timed_out_on())
        raise
    finally:
        session.unregister(request.request_id)
        if queued:
            session.keeper.untrack_ticket(request.request_id)
    return outcome, state, attempt


async def wait_for_grant_async(
    astore: AsyncStore,
    session: Session,
    request: AcquireRequest,
    timeout: object,
    on_wait: Callable[[WaitInfo], None] | None = None,
) -> tuple[Granted, LeaseState | None, Attempt]:
    """The async twin: waiting is an asyncio.Event; cancellation is safe at every await."""
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
            try:
                outcome = await asyncio.shield(step)
            except StoreUnavailable as exc:
                outcome = attempt.still_waiting(exc)
            if isinstance(outcome, Granted):
                break
            sleep = attempt.next_sleep(outcome)
            if on_wait is not None:
                on_wait(attempt.wait_info(outcome))
            if not queued:
                queued = True
                session.keeper.track_ticket(request.request_id, outcome.lease_ttl)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), sleep)
        state = _track(session, request, outcome, attempt)
    except BaseException:
        session.keeper.untrack_lease(request.request_id)
        await _withdraw(astore, request.request_id, step, _timed_out_on())
        raise
    finally:
        session.unregister(request.request_id)
        if queued:
            session.keeper.untrack_ticket(request.request_id)
    return outcome, state, attempt


def _track(
    session: Session, request: AcquireRequest, grant: Granted, attempt: Attempt
) -> LeaseState | None:
    counters.record_grant(grant.names, request.occupy, attempt.waited)
    if grant.lease_id is None:
        return None  # rate units: nothing to hold or renew
    state = LeaseState.from_grant(grant, request, attempt.waited)
    session.keeper.track_lease(state)
    return state


def _releaser(signal: threading.Lock) -> Callable[[], None]:
    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # already woken
            signal.release()

    return wake


def _timed_out_on() -> str | None:
    """The limit an AcquireTimeout being handled was queued behind, else None."""
    exc = sys.exc_info()[1]
    return exc.blocked_on if isinstance(exc, AcquireTimeout) else None


async def _withdraw(
    astore: AsyncStore,
    request_id: str,
    step: asyncio.Future[Granted | Queued] | None,
    timed_out_on: str | None,
) -> None:
    """Leave the queue and give back a late grant, even while being cancelled."""

    async def withdraw() -> None:
        if step is not None and not step.done():
            with contextlib.suppress(BaseException):
                await step  # let the in-flight attempt finish, then undo it
        await astore.abandon(request_id, timed_out_on)

    cleanup = asyncio.ensure_future(withdraw())
    with contextlib.suppress(BaseException):  # a second cancel: the cleanup still runs
        await asyncio.shield(cleanup)


# --------------------------------------------------------------------------- releasing


def release_lease(store: Store, session: Session, state: LeaseState) -> None:
    """Give a lease's units back; raise LeaseLost if it had been lost.

    A lease already known lost (its renewals failed past its TTL) is reported
    as LeaseLost even when the store cannot be reached to release it: it has
    expired there, and the store reclaims it.
    """
    session.keeper.untrack_lease(state.id)
    try:
        found = store.release(state.id)
    except StoreError:
        if not state.lost:
            raise
        found = False
    raise_if_lost(state, found)


async def release_lease_async(astore: AsyncStore, session: Session, state: LeaseState) -> None:
    """The async twin; shielded, so a cancellation cannot leave the units held."""
    session.keeper.untrack_lease(state.id)
    try:
        found = await asyncio.shield(astore.release(state.id))
    except StoreError:
        if not state.lost:
            raise
        found = False
    raise_if_lost(state, found)


def close_store(store: Store, session: Session) -> None:
    """Drop a client's reference to a store; the last one closes it and its session."""
    if release_store(store):
        session.close()


async def close_store_async(store: Store, session: Session) -> None:
    """The async twin, closing the store off the event loop."""
    loop = asyncio.get_running_loop()
    if await loop.run_in_executor(session.executor(), release_store, store):
        session.close()
