"""A mixed, adversarial workload on one store: many threads take random sets of limits
(slots, slots+rate, rate-only), with random occupy, short timeouts and asyncio
cancellations, while admin calls change the limits underneath. Afterwards: no limit
was ever over its slots, nothing is left held or queued, and every caller finished."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

import sluice.aio
from sluice import Limits
from sluice.errors import AcquireTimeout

from ._helpers import Interval, peak_units, wait_for_idle

pytestmark = pytest.mark.timeout(90)

LIMITS = {"a": 3, "b": 4, "c": 2}  # c also has a rate


def test_mixed_threads_timeouts_and_cancellations_never_over_and_end_empty(
    limits: Limits, store_url: str
) -> None:
    limits.create("a", slots=LIMITS["a"])
    limits.create("b", slots=LIMITS["b"])
    limits.create("c", slots=LIMITS["c"], rate=200.0, burst=4)
    limits.create("r", rate=100.0, burst=3)
    held: dict[str, list[Interval]] = {name: [] for name in LIMITS}
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
                start = time.monotonic()
                time.sleep(rng.uniform(0, 0.01))
                end = time.monotonic()
                with record:
                    for name in lease.names:
                        held[name].append((start, end, occupy))
                lease.release()
                if rng.random() < 0.2:
                    limits.rate_limit("r", timeout=1)
                with record:
                    done["sync"] += 1
        except BaseException as exc:
            errors.append(exc)

    async def async_side() -> int:
        cancelled = 0
        async with sluice.aio.Limits(store_url) as alimits:
            rng = random.Random(99)
            while time.monotonic() < stop_at:
                task = asyncio.ensure_future(alimits.acquire(["a", "b"], occupy=2))
                await asyncio.sleep(rng.uniform(0, 0.01))
                if task.cancel():
                    cancelled += 1
                try:
                    lease = await task
                except asyncio.CancelledError:
                    continue
                await lease.release()
        return cancelled

    def admin() -> None:
        rng = random.Random(7)
        try:
            while time.monotonic() < stop_at:
                time.sleep(0.2)
                name = rng.choice(sorted(LIMITS))
                limits.disable(name)
                time.sleep(0.02)
                limits.enable(name)
                limits.update("c", rate=rng.choice([100.0, 200.0]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sync_worker, args=(i,)) for i in range(8)]
    threads.append(threading.Thread(target=admin))
    for thread in threads:
        thread.start()
    cancelled = asyncio.run(async_side())
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert done["sync"] > 50, done
    assert cancelled > 0
    for name, intervals in held.items():
        # A lease names only the limits that were active when it was granted, so
        # what was admitted while a limit was disabled is not counted against it.
        peak, at = peak_units(intervals)
        assert peak <= LIMITS[name], f"{name}: {peak} units held at {at}"
    for name in [*LIMITS, "r"]:
        status = wait_for_idle(limits, name)
        assert status.in_use == 0 and status.waiters == [], (name, status)
