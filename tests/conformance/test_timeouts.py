"""Semantics 9: timeouts bound the whole wait; timed-out, cancelled or interrupted
waiters leave the queue, and a grant that lands after cancellation is released."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import threading
import time

import pytest

from sluice import Limits, aio
from sluice.errors import AcquireTimeout, InvalidRequest
from sluice.limits import waiting

from ._helpers import (
    LATE_BOUND,
    WAKE_BOUND,
    Attempt,
    simulate_work_async,
    stays,
    wait_for_idle,
    wait_for_waiters,
    wait_until,
    wait_until_async,
)

pytestmark = pytest.mark.timeout(60)


async def waiters_async(limits: aio.Limits, name: str, count: int, timeout: float = 5.0) -> None:
    async def probe() -> bool:
        return len((await limits.inspect(name)).waiters) >= count

    await wait_until_async(probe, timeout, f"{count} waiter(s) on {name!r}")


async def idle_async(limits: aio.Limits, name: str, timeout: float = 3.0) -> None:
    async def probe() -> bool:
        status = await limits.inspect(name)
        return status.in_use == 0 and not status.waiters

    await wait_until_async(probe, timeout, f"{name!r} to have in_use 0 and no waiters")


def test_timeout_zero_is_one_attempt(limits: Limits) -> None:
    limits.create("db", slots=1)
    free = limits.acquire("db", timeout=0)
    assert free.waited < 0.5
    started = time.monotonic()
    with pytest.raises(AcquireTimeout) as info:
        limits.acquire("db", timeout=0)
    assert time.monotonic() - started < 0.5
    err = info.value
    assert isinstance(err, TimeoutError)
    assert err.limits == ("db",)
    assert err.timeout == 0
    assert err.blocked_on == "db"
    assert 0 <= err.waited < 0.5
    assert limits.inspect("db").waiters == []
    free.release()


def test_acquire_timeout_says_which_limit_how_long_and_where(limits: Limits) -> None:
    limits.create("db", slots=1)
    held = limits.acquire("db")
    started = time.monotonic()
    with pytest.raises(AcquireTimeout) as info:
        limits.acquire("db", timeout=0.3)
    elapsed = time.monotonic() - started
    err = info.value
    assert 0.3 - 0.01 <= elapsed < 0.3 + 0.5
    assert err.limits == ("db",)
    assert err.timeout == 0.3
    assert 0.3 - 0.01 <= err.waited < 0.3 + 0.5
    assert err.position == 1
    assert err.blocked_on == "db"
    assert "'db'" in str(err)
    assert limits.inspect("db").waiters == []
    assert limits.inspect("db").in_use == 1
    held.release()


def test_acquire_timeout_on_several_limits_names_the_blocking_one(limits: Limits) -> None:
    limits.create("a", slots=1)
    limits.create("b", slots=1)
    held = limits.acquire("b")
    ahead = Attempt(limits, "b", holder="ahead").start()
    wait_for_waiters(limits, "b", 1)
    with pytest.raises(AcquireTimeout) as info:
        limits.acquire(["b", "a"], timeout=0.2)
    assert sorted(info.value.limits) == ["a", "b"]
    assert info.value.blocked_on == "b"
    assert info.value.position == 2
    assert [w.holder for w in limits.inspect("b").waiters] == ["ahead"]
    assert limits.inspect("a").waiters == []
    held.release()
    ahead.result().release()


def test_the_timeout_bounds_the_whole_wait_and_position_is_current(limits: Limits) -> None:
    limits.create("db", slots=1)
    held = limits.acquire("db")
    first = Attempt(limits, "db", holder="first").start()
    wait_for_waiters(limits, "db", 1)
    late = Attempt(limits, "db", timeout=1.2, holder="late").start()
    wait_for_waiters(limits, "db", 2)
    # 'late' stays queued for at least half its timeout before its line moves, so a
    # timeout that restarted when it is woken would overrun the bound below.
    assert late.started_at is not None
    stays(lambda: not late.done.is_set(), late.started_at + 0.6 - time.monotonic(), "late waits")
    held.release()  # 'first' gets it and keeps it; 'late' is woken up but moves to position 1
    first_lease = first.result()
    late.join()
    assert isinstance(late.error, AcquireTimeout)
    assert late.started_at is not None and late.finished_at is not None
    assert 1.2 - 0.01 <= late.finished_at - late.started_at < 1.2 + 0.5
    assert late.error.position == 1
    assert late.error.blocked_on == "db"
    assert limits.inspect("db").waiters == []
    first_lease.release()


def test_a_timed_out_head_lets_the_next_waiter_through_promptly(limits: Limits) -> None:
    limits.create("db", slots=2)
    held = limits.acquire("db", occupy=1)
    head = Attempt(limits, "db", occupy=2, timeout=0.4, holder="head").start()
    wait_for_waiters(limits, "db", 1)
    behind = Attempt(limits, "db", occupy=1, holder="behind").start()
    wait_for_waiters(limits, "db", 2)
    assert not behind.granted.is_set()  # a free unit, but FIFO keeps it for the head
    head.join()
    assert isinstance(head.error, AcquireTimeout)
    lease = behind.result()
    assert head.finished_at is not None and behind.granted_at is not None
    assert behind.granted_at - head.finished_at < WAKE_BOUND
    lease.release()
    held.release()
    wait_for_idle(limits, "db")


@pytest.mark.parametrize("timeout", [-0.1, float("nan"), float("-inf")])
def test_invalid_timeouts_are_rejected(limits: Limits, timeout: float) -> None:
    limits.create("db", slots=1)
    with pytest.raises(InvalidRequest):
        limits.acquire("db", timeout=timeout)
    with pytest.raises(InvalidRequest):
        limits.rate_limit("db", timeout=timeout)
    assert limits.inspect("db").in_use == 0


def test_cancelling_an_async_waiter_leaves_the_queue(store_url: str) -> None:
    async def main() -> None:
        async with aio.Limits(store_url) as limits:
            await limits.create("db", slots=1)
            held = await limits.acquire("db")
            task = asyncio.create_task(limits.acquire("db", timeout=20))
            await waiters_async(limits, "db", 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

            async def gone() -> bool:
                return not (await limits.inspect("db")).waiters

            await wait_until_async(gone, 1.0, "the cancelled waiter to leave the queue")
            assert (await limits.inspect("db")).in_use == 1
            await held.release()
            lease = await limits.acquire("db", timeout=0)  # no ghost ahead of us
            await lease.release()
            await idle_async(limits, "db")

    asyncio.run(main())


def test_wait_for_timeout_on_an_async_acquire_leaves_the_queue(store_url: str) -> None:
    async def main() -> None:
        async with aio.Limits(store_url) as limits:
            await limits.create("db", slots=1)
            held = await limits.acquire("db")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(limits.acquire("db"), 0.2)
            await held.release()
            await idle_async(limits, "db", 1.0)

    asyncio.run(main())


def test_cancellation_racing_a_grant_never_leaks_a_unit(store_url: str) -> None:
    """Cancel waiters at many points around the moment their grant lands.

    The release that hands the waiter its grant starts as a task of its own, and the
    cancel comes 0 to 11 loop turns after it starts, or 1 to 3 ms after: early ones
    find the waiter still waiting (cancelled), late ones find it granted. Rounds go
    on until both outcomes were seen several times; after every round the unit is
    free again and nobody waits.
    """

    async def main() -> dict[str, int]:
        async with aio.Limits(store_url) as limits:
            await limits.create("db", slots=1)
            outcomes = {"granted": 0, "cancelled": 0}
            rounds = 0
            while rounds < 30 or min(outcomes.values()) < 3:
                assert rounds < 300, f"one outcome never came in {rounds} rounds: {outcomes}"
                held = await limits.acquire("db")
                task = asyncio.create_task(limits.acquire("db", timeout=20))
                await waiters_async(limits, "db", 1)
                releasing = asyncio.create_task(held.release())
                for _ in range(rounds % 12):
                    await asyncio.sleep(0)  # one turn of the loop
                if rounds % 15 >= 12:
                    await simulate_work_async(0.001 * (rounds % 15 - 11))
                task.cancel()
                await releasing
                try:
                    lease = await task
                except asyncio.CancelledError:
                    outcomes["cancelled"] += 1
                else:
                    outcomes["granted"] += 1
                    await lease.release()
                await idle_async(limits, "db")
                rounds += 1
            # the limit still works at full capacity
            lease = await limits.acquire("db", timeout=0)
            await lease.release()
            return outcomes

    outcomes = asyncio.run(main())
    assert outcomes["granted"] >= 3 and outcomes["cancelled"] >= 3, outcomes


def test_a_concurrency_block_cancelled_as_its_grant_lands_ends_and_frees_the_unit(
    store_url: str,
) -> None:
    """The hand-off and the cancellation in the same loop iteration (then 1 to 5 turns
    apart, then 1 and 2 ms apart): the cancelled block always ends, promptly, whether it
    was still waiting or already inside, and the unit is free afterwards."""

    async def main() -> None:
        async with aio.Limits(store_url) as limits:
            await limits.create("db", slots=1)
            for delay in [0, 0, 1, 2, 3, 4, 5, -1, -2]:
                held = await limits.acquire("db")
                never = asyncio.Event()

                async def block(never: asyncio.Event = never) -> None:
                    async with limits.concurrency("db", timeout=60):
                        await never.wait()

                task = asyncio.create_task(block())
                await waiters_async(limits, "db", 1)
                releasing = asyncio.ensure_future(held.release())
                if delay > 0:
                    for _ in range(delay):
                        await asyncio.sleep(0)
                elif delay < 0:
                    await asyncio.sleep(-delay / 1000)
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=10)
                assert task in done, f"the cancelled block never ended (delay {delay})"
                assert task.cancelled()
                await releasing
                await idle_async(limits, "db")
            lease = await limits.acquire("db", timeout=0)
            await lease.release()

    asyncio.run(main())


def test_cancelling_a_rate_waiter_takes_no_token(store_url: str) -> None:
    async def main() -> None:
        async with aio.Limits(store_url) as limits:
            await limits.create("api", rate=2.0, burst=1)
            await limits.rate_limit("api", timeout=0)
            task = asyncio.create_task(limits.rate_limit("api", timeout=10))
            await waiters_async(limits, "api", 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            started = time.monotonic()
            await limits.rate_limit("api", timeout=5)  # the token due 0.5 s after the first
            assert time.monotonic() - started <= 0.5 + LATE_BOUND

    asyncio.run(main())


@pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
    reason="SIGINT is not mapped to KeyboardInterrupt in this process",
)
def test_keyboard_interrupt_while_waiting_leaves_the_queue(limits: Limits) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("KeyboardInterrupt is delivered to the main thread only")
    limits.create("db", slots=1)
    held = limits.acquire("db")
    main_thread = threading.main_thread().ident
    assert main_thread is not None
    sent: list[float] = []

    def blocked_in_a_wait() -> bool:
        """Whether the main thread's innermost Python frame is where the library's wait
        loop blocks on its signal lock (in C), a slice at a time."""
        # No automatic garbage collection while sys._current_frames() runs: on CPython
        # before 3.12 one that runs inside it can deadlock the process (python/cpython#106883,
        # seen here: every thread stopped for good).
        collecting = gc.isenabled()
        gc.disable()
        try:
            frame = sys._current_frames().get(main_thread)
        finally:
            if collecting:
                gc.enable()
        return frame is not None and frame.f_code is waiting._block.__code__

    def interrupt() -> None:
        wait_for_waiters(limits, "db", 1)
        wait_until(blocked_in_a_wait, 5, "the main thread to block in its wait")
        sent.append(time.monotonic())
        signal.pthread_kill(main_thread, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt, daemon=True)
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        limits.acquire("db", timeout=10)
    raised_at = time.monotonic()
    interrupter.join(5)
    assert sent and raised_at - sent[0] < 1.0, "the wait did not notice Ctrl-C promptly"
    wait_until(lambda: not limits.inspect("db").waiters, 1.0, "the interrupted waiter to go")
    assert limits.inspect("db").in_use == 1
    held.release()
    limits.acquire("db", timeout=0).release()
    wait_for_idle(limits, "db")
