"""The only code that differs between the sync and async front doors: how to wait.

Each operation here has a sync function and an ``_async`` twin of the same
name. :mod:`sluice.limits.aio` calls the twins; ``scripts/unasync.py`` turns it
into :mod:`sluice.limits.sync`, which calls the sync ones. Both stand in the same
:class:`~sluice.limits.line.Line` and differ only in how a caller waits for its
signal: a held lock (threads) or an ``asyncio.Event`` (coroutines).

Bounded waits when the store stalls: a waiter with a timeout never waits for a
store step. It returns :class:`~sluice.errors.AcquireTimeout` within its timeout
plus :data:`TIMEOUT_GRACE` whatever the store does (the line settles its part
when the store answers again), and a sync caller with a timeout shorter than the
store's step deadline never runs a round on its own thread. Calls without a
timeout, and releases, are bounded by the store's per-step deadline
(:mod:`sluice.store.deadline`): they raise StoreUnavailable past it (a call without
a timeout within two deadlines plus :data:`TIMEOUT_GRACE`: a round already under
way, then its own; a release within one plus the grace).

Each request, each new place in line, each grant, each give-up and each release is
logged at DEBUG on ``sluice.limits``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from sluice import _loops
from sluice.errors import AcquireTimeout, StoreError, StoreUnavailable
from sluice.limits import counters
from sluice.limits.lease import LeaseState, raise_if_lost
from sluice.limits.model import WaitInfo, validate_timeout
from sluice.limits.session import Session
from sluice.limits.tickets import Release, Waiter
from sluice.store import release_store
from sluice.store.base import AcquireRequest, AsyncStore, Store, ThreadedAsyncStore
from sluice.store.deadline import DEFAULT_STEP_TIMEOUT, overdue

__all__ = [
    "TIMEOUT_GRACE",
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


log = logging.getLogger("sluice.limits")

TIMEOUT_GRACE = 0.5
"""Seconds past its timeout that a waiter waits for the store's last answer (where it
stands now, or that it left the line) before it gives up without it: an acquire with a
timeout returns within ``timeout + TIMEOUT_GRACE`` even while the store stalls."""

MAIN_THREAD_SLICE = 0.25
"""Seconds the main thread blocks at a time while it waits: a Ctrl-C that arrives just
before it blocks (CPython runs signal handlers between bytecodes, and a blocked lock wait
is not always woken by the signal) is acted on within this, not when the wait ends."""


def _block(lock: threading.Lock, timeout: float | None) -> bool:
    """Acquire ``lock`` within ``timeout`` seconds (None: however long); True if acquired.

    Other threads block in one call; the main thread in slices of
    :data:`MAIN_THREAD_SLICE`, running any pending signal handler (KeyboardInterrupt)
    between them.
    """
    if threading.current_thread() is not threading.main_thread():
        return lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        step = MAIN_THREAD_SLICE if end is None else min(MAIN_THREAD_SLICE, end - time.monotonic())
        if step <= 0:
            return lock.acquire(blocking=False)
        if lock.acquire(timeout=step):
            return True


def step_timeout_of(store: Store) -> float:
    """The store's per-step deadline (:mod:`sluice.store.deadline`)."""
    return float(getattr(store, "step_timeout", DEFAULT_STEP_TIMEOUT))


def _leads(store: Store, limit: float | None) -> bool:
    """Whether a sync caller may run rounds on its own thread: a round can take up to
    the store's step deadline, so only a caller who would wait that long anyway does."""
    return limit is None or limit >= step_timeout_of(store)


def _settle_within(store: Store, waiter: Waiter, limit: float | None) -> float:
    """How long a waiter who gave up waits for the line to undo its part (a withdrawal,
    or the release of a grant on its way): within its timeout's grace, and never past
    the store's step deadline."""
    bound = step_timeout_of(store) + TIMEOUT_GRACE
    if limit is None:
        return bound
    return min(bound, max(waiter.started + limit + TIMEOUT_GRACE - time.monotonic(), 0.0))


def async_store_for(store: Store, session: Session) -> AsyncStore:
    """The store's admin steps as coroutines: run on the session's worker threads."""
    return ThreadedAsyncStore(store, session.executor())


# --------------------------------------------------------------------------- holder labels


def default_holder() -> str:
    """The current thread's name."""
    return threading.current_thread().name


def default_holder_async() -> str:
    """The current asyncio task's name."""
    task = asyncio.current_task()
    return task.get_name() if task is not None else threading.current_thread().name


# --------------------------------------------------------------------------- waiting


def _left(waiter: Waiter, timeout: float | None, refresh: Callable[[], None]) -> float | None:
    """Seconds the waiter may still wait (None: until signalled); raise AcquireTimeout if none.

    A waiter times out once the store has answered it after its deadline
    (``refresh`` asks for that answer, once): a single attempt (``timeout=0``) gets
    one answer, and the error names the place in line the waiter really had. If the
    store gives no answer within :data:`TIMEOUT_GRACE` past the deadline (it stalls),
    the waiter times out without it, with the last place it was told (or none).
    """
    if timeout is None:
        return None
    deadline = waiter.started + timeout
    now = time.monotonic()
    left = deadline - now
    if left > 0:
        return left
    info = waiter.info
    last = deadline + TIMEOUT_GRACE - now
    if last > 0 and (info is None or waiter.answered_at < deadline):
        if info is not None and not waiter.asking:
            waiter.asking = True
            refresh()  # one last look, for where it stands now
        return last
    blocked_on = info.blocked_on if info is not None else None
    if blocked_on is not None:
        counters.record_timeout(blocked_on)
    raise AcquireTimeout(
        waiter.request.names,
        timeout,
        now - waiter.started,
        info.position if info is not None else None,
        blocked_on,
    )


def _news(waiter: Waiter, on_wait: Callable[[WaitInfo], None] | None) -> None:
    """Tell ``on_wait`` where the waiter stands, if that changed since it was last told."""
    if waiter.told:
        waiter.told = False
        info = waiter.wait_info()
        if info is not None:
            log.debug(
                "sluice: %s waits on %s at position %s",
                waiter.request.holder,
                info.blocked_on or "its ticket",
                info.position,
            )
        if on_wait is not None and info is not None:
            on_wait(info)


def _timed_out_on(waiter: Waiter, exc: BaseException) -> str | None:
    """The limit a waiter that gave up with AcquireTimeout was queued behind, else None."""
    return exc.blocked_on if isinstance(exc, AcquireTimeout) else None


def wait_for_grant(
    store: Store,
    session: Session,
    request: AcquireRequest,
    timeout: object,
    on_wait: Callable[[WaitInfo], None] | None = None,
) -> Waiter:
    """Stand in line until granted (``waiter.grant``); give up on any error or interrupt."""
    limit = validate_timeout(timeout)
    # A held lock is the cheapest one-shot signal: the line releases it, and
    # acquiring it again both waits for and consumes the signal.
    signal = threading.Lock()
    signal.acquire()
    waiter = Waiter(request, _releaser(signal))
    lead = _leads(store, limit)
    _asks(request)
    session.line.arrive(waiter, lead=lead)
    try:
        while waiter.grant is None:
            if waiter.error is not None:
                raise waiter.error
            _news(waiter, on_wait)
            left = _left(waiter, limit, lambda: session.line.refresh(waiter, False))
            if waiter.grant is None and waiter.error is None and not waiter.told:
                _block(signal, left)
    except BaseException as exc:
        # Timed out, interrupted or failed: leave the line, and return once that is
        # done; a grant that landed meanwhile is given back.
        settled = threading.Lock()
        settled.acquire()
        if session.line.give_up(waiter, _timed_out_on(waiter, exc), _releaser(settled), lead):
            settled.acquire(timeout=_settle_within(store, waiter, limit))
        elif waiter.state is not None:
            with contextlib.suppress(Exception):
                release_lease(session, waiter.state, lead)
        _gave_up(waiter, exc)
        raise
    _granted(waiter)
    return waiter


async def wait_for_grant_async(
    astore: AsyncStore,
    session: Session,
    request: AcquireRequest,
    timeout: object,
    on_wait: Callable[[WaitInfo], None] | None = None,
) -> Waiter:
    """The async twin: waiting is a future of the loop; cancellation is safe at every await."""
    limit = validate_timeout(timeout)
    signal = _LoopSignal(asyncio.get_running_loop())
    waiter = Waiter(request, signal)
    _asks(request)
    session.line.arrive(waiter, lead=False)
    try:
        while waiter.grant is None:
            woken = signal.arm()
            if waiter.error is not None:
                raise waiter.error
            _news(waiter, on_wait)
            left = _left(waiter, limit, lambda: session.line.refresh(waiter, False))
            if waiter.grant is None and waiter.error is None and not waiter.told:
                # Not asyncio.wait_for: it can swallow a cancellation that arrives as the
                # future is set (Python < 3.12); the deadline just sets the future too.
                timer = None if left is None else signal.loop.call_later(left, _wake, woken)
                try:
                    await woken
                finally:
                    if timer is not None:
                        timer.cancel()
    except BaseException as exc:
        settled = signal.loop.create_future()

        def settle() -> None:
            _loops.post(signal.loop, _wake, settled)

        if session.line.give_up(waiter, _timed_out_on(waiter, exc), settle, False):
            within = _settle_within(astore.sync, waiter, limit)
            with contextlib.suppress(BaseException):  # a second cancel: the line goes on
                await asyncio.wait_for(asyncio.shield(settled), within)
        elif waiter.state is not None:
            with contextlib.suppress(BaseException):
                await release_lease_async(session, waiter.state)
        _gave_up(waiter, exc)
        raise
    _granted(waiter)
    return waiter


def _asks(request: AcquireRequest) -> None:
    log.debug(
        "sluice: %s asks for %d unit(s) of %s (%s)",
        request.holder,
        request.occupy,
        ", ".join(request.names),
        request.kind.value,
    )


def _granted(waiter: Waiter) -> None:
    state = waiter.state
    log.debug(
        "sluice: %s granted %d unit(s) of %s after %.3f s%s",
        waiter.request.holder,
        waiter.request.occupy,
        ", ".join(waiter.request.names),
        time.monotonic() - waiter.started,
        f", lease {state.id}" if state is not None else "",
    )


def _gave_up(waiter: Waiter, exc: BaseException) -> None:
    log.debug(
        "sluice: %s left the line of %s after %.3f s: %s",
        waiter.request.holder,
        ", ".join(waiter.request.names),
        time.monotonic() - waiter.started,
        type(exc).__name__,
    )


def _released(state: LeaseState, found: bool) -> None:
    log.debug(
        "sluice: %s released lease %s (%d unit(s) of %s)%s",
        state.holder,
        state.id,
        state.occupy,
        ", ".join(state.names),
        "" if found and not state.lost else "; it had been lost",
    )


class _LoopSignal:
    """A waiter's signal to its coroutine: wakes the future it currently waits on."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def arm(self) -> asyncio.Future[None]:
        """The future to wait on next (a fresh one once the last was woken)."""
        if self.future.done():
            self.future = self.loop.create_future()
        return self.future

    def __call__(self) -> None:
        _loops.post(self.loop, self._fire)

    def _fire(self) -> None:
        _wake(self.future)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _releaser(signal: threading.Lock) -> Callable[[], None]:
    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # already woken
            signal.release()

    return wake


# --------------------------------------------------------------------------- releasing


def release_lease(session: Session, state: LeaseState, lead: bool = True) -> None:
    """Give a lease's units back; raise LeaseLost if it had been lost.

    A lease already known lost (its renewals failed past its TTL) is reported
    as LeaseLost even when the store cannot be reached to release it: it has
    expired there, and the store reclaims it. Raises StoreUnavailable if the
    store does not confirm the release within its step deadline (plus
    :data:`TIMEOUT_GRACE`); the release stays in line, and if it never gets
    through, the lease expires in the store by itself.
    """
    session.keeper.untrack_lease(state.id)
    signal = threading.Lock()
    signal.acquire()
    release = Release(state.id, _releaser(signal))
    session.line.release(release, lead=lead)
    if not _block(signal, step_timeout_of(session.store) + TIMEOUT_GRACE):
        raise _unconfirmed(session, state)
    _finish_release(state, release)


async def release_lease_async(session: Session, state: LeaseState) -> None:
    """The async twin; the release happens even if the caller is cancelled meanwhile."""
    session.keeper.untrack_lease(state.id)
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def signal() -> None:
        _loops.post(loop, _wake, done)

    release = Release(state.id, signal)
    session.line.release(release, lead=False)
    within = step_timeout_of(session.store) + TIMEOUT_GRACE
    try:
        await asyncio.wait_for(asyncio.shield(done), within)
    except asyncio.TimeoutError:
        raise _unconfirmed(session, state) from None
    _finish_release(state, release)


def _unconfirmed(session: Session, state: LeaseState) -> StoreUnavailable:
    return overdue(
        session.store.url,
        step_timeout_of(session.store),
        f"releasing lease {state.id}: the release is still sent when the store answers, "
        "and the lease expires there by itself if it never is",
    )


def _finish_release(state: LeaseState, release: Release) -> None:
    if release.error is not None:
        if not (isinstance(release.error, StoreError) and state.lost):
            raise release.error
        found = False
    else:
        found = bool(release.found)
    _released(state, found)
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
