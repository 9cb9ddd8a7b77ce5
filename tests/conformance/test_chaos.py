"""A mixed, adversarial workload on one store: many threads take random sets of limits
(slots, slots+rate, rate-only), with random occupy, short timeouts and asyncio
cancellations, from threads and coroutines at once, while admin calls change the
limits underneath. Afterwards: no limit was ever over its slots (counting what threads
and coroutines held), the rate-only limit never granted over burst + rate * window,
nothing is left held or queued, and every caller finished."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

import sluice.aio
from sluice import Limits
from sluice.errors import AcquireTimeout

from ._helpers import Holdings, simulate_work, simulate_work_async, wait_for_idle

pytestmark = pytest.mark.timeout(90)

LIMITS = {"a": 3, "b": 4, "c": 2}  # c also has a rate
RATE_R = (100.0, 3)  # rate and burst of "r", a rate-only limit


def test_mixed_threads_timeouts_and_cancellations_never_over_and_end_empty(
    limits: Limits, store_url: str
) -> None:
    limits.create("a", slots=LIMITS["a"])
    limits.create("b", slots=LIMITS["b"])
    limits.create("c", slots=LIMITS["c"], rate=200.0, burst=4)
    limits.create("r", rate=RATE_R[0], burst=RATE_R[1])
    # Every caller, thread or coroutine, records what it held in one place. A lease
    # names only the limits that were active when it was granted, so what was
    # admitted while a limit was disabled is not counted against it.
    holdings = Holdings(slots=LIMITS, rates={"r": RATE_R})
    record = threading.Lock()
    errors: list[BaseException] = []
    done = {"sync": 0, "timeouts": 0}
    stop_at = time.monotonic() + 4.0

    def sync_worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while time.monotonic() < stop_at:
                names = rng.sample(sorted(LIMITS), rng.randint(1, 3))
                occupy = rng.randint(1, 2)
                try:
                    lease = limits.acquire(names, occupy=occupy, timeout=rng.choice([0, 0.05, 1]))
                except AcquireTimeout:
                    with record:
                        done["timeouts"] += 1
                    continue
                with holdings.holding(lease.names, occupy):
                    simulate_work(rng.uniform(0, 0.01))
                lease.release()
                if rng.random() < 0.2:
                    before = time.monotonic()
                    limits.rate_limit("r", timeout=1)
                    holdings.rate_grant("r", 1, before, time.monotonic())
                with record:
                    done["sync"] += 1
        except BaseException as exc:
            errors.append(exc)

    async def canceller(alimits: sluice.aio.Limits) -> tuple[int, int]:
        """Acquires on a and b that are cancelled at random moments around their grant."""
        cancelled = granted = 0
        rng = random.Random(99)
        while time.monotonic() < stop_at:
            task = asyncio.ensure_future(alimits.acquire(["a", "b"], occupy=2))
            await simulate_work_async(rng.uniform(0, 0.01))
            if task.cancel():
                cancelled += 1
            try:
                lease = await task
            except asyncio.CancelledError:
                continue
            granted += 1
            with holdings.holding(lease.names, 2):
                await simulate_work_async(rng.uniform(0, 0.005))
            await lease.release()
        return cancelled, granted

    async def async_worker(alimits: sluice.aio.Limits, seed: int) -> tuple[int, int]:
        """Like sync_worker, on the event loop: random limits, occupy and timeouts."""
        granted = timeouts = 0
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            names = rng.sample(sorted(LIMITS), rng.randint(1, 3))
            occupy = rng.randint(1, 2)
            try:
                lease = await alimits.acquire(names, occupy, timeout=rng.choice([0, 0.05, 1]))
            except AcquireTimeout:
                timeouts += 1
                continue
            granted += 1
            with holdings.holding(lease.names, occupy):
                await simulate_work_async(rng.uniform(0, 0.01))
            await lease.release()
            if rng.random() < 0.2:
                before = time.monotonic()
                await alimits.rate_limit("r", timeout=1)
                holdings.rate_grant("r", 1, before, time.monotonic())
        return granted, timeouts

    async def async_side() -> tuple[tuple[int, int], list[tuple[int, int]]]:
        async with sluice.aio.Limits(store_url) as alimits:
            cancelling = asyncio.ensure_future(canceller(alimits))
            workers = await asyncio.gather(*(async_worker(alimits, 100 + i) for i in range(3)))
            return await cancelling, list(workers)

    def admin() -> None:
        rng = random.Random(7)
        try:
            while time.monotonic() < stop_at:
                simulate_work(0.2)  # the pace of the admin churn
                name = rng.choice(sorted(LIMITS))
                limits.disable(name)
                simulate_work(0.02)
                limits.enable(name)
                limits.update("c", rate=rng.choice([100.0, 200.0]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sync_worker, args=(i,)) for i in range(8)]
    threads.append(threading.Thread(target=admin))
    for thread in threads:
        thread.start()
    (cancelled, cancel_raced_grants), workers = asyncio.run(async_side())
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert done["sync"] > 50, done
    assert cancelled > 0
    async_granted = cancel_raced_grants + sum(granted for granted, _ in workers)
    assert async_granted > 20, (cancel_raced_grants, workers)  # the async side took part
    holdings.check()
    for name in [*LIMITS, "r"]:
        status = wait_for_idle(limits, name)
        assert status.in_use == 0 and status.waiters == [], (name, status)
