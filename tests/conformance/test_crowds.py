"""Hundreds of waiters on one limit, from threads and from coroutines: served in arrival
order, never more holders than slots, nothing left behind.

Each waiter has its own holder name, so each stands on its own ticket (identical
requests of one process would share one). Arrival order is what the store reports:
the waiters' positions in ``inspect`` once every one of them is queued. Grant order
is the store's too: each lease's ``acquired_at``, on the store's clock, which must
never go backwards along the arrival order (waiters granted in one step share it).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from datetime import datetime

import pytest

from sluice import Limits, LimitStatus, aio

from ._helpers import (
    Holdings,
    simulate_work,
    simulate_work_async,
    wait_for_idle,
    wait_for_waiters,
    wait_until_async,
)

pytestmark = pytest.mark.timeout(60)

CROWD = 200
SLOTS = 5
QUEUE_TIMEOUT = 30.0
"""Seconds for the whole crowd to show up in the queue (slow CI boxes)."""


def arrival_order(status: LimitStatus) -> list[str]:
    """The holders of ``status``'s waiters in queue order, checking one ticket each."""
    waiters = sorted(status.waiters, key=lambda w: w.position)
    assert [w.position for w in waiters] == list(range(1, CROWD + 1))
    assert all(w.count == 1 and w.occupy == 1 for w in waiters)
    assert len({w.ticket_id for w in waiters}) == CROWD
    return [w.holder for w in waiters]


def assert_served_in_order(arrival: list[str], acquired: dict[str, datetime]) -> None:
    """No waiter was granted before one that arrived ahead of it."""
    assert sorted(acquired) == sorted(arrival)
    for ahead, behind in itertools.pairwise(arrival):
        assert acquired[ahead] <= acquired[behind], (
            f"{behind} (granted {acquired[behind]}) overtook {ahead} (granted {acquired[ahead]})"
        )


def test_hundreds_of_threads_are_served_in_arrival_order_never_over(limits: Limits) -> None:
    limits.create("db", slots=SLOTS)
    holdings = Holdings(slots={"db": SLOTS})
    blocker = limits.acquire("db", occupy=SLOTS, holder="blocker")
    acquired: dict[str, datetime] = {}
    errors: list[BaseException] = []

    def waiter(holder: str) -> None:
        try:
            with limits.concurrency("db", timeout=60, holder=holder) as lease:
                acquired[holder] = lease.acquired_at
                with holdings.holding("db"):
                    holdings.wait_full("db", SLOTS)
                    simulate_work(0.002)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=waiter, args=(f"t{i:03d}",), daemon=True) for i in range(CROWD)
    ]
    for thread in threads:
        thread.start()
    arrival = arrival_order(wait_for_waiters(limits, "db", CROWD, timeout=QUEUE_TIMEOUT))
    assert limits.inspect("db").in_use == SLOTS  # nobody got past the blocker
    blocker.release()
    for thread in threads:
        thread.join(45)
        assert not thread.is_alive(), "a waiter is still waiting"
    assert not errors, errors[:3]
    assert_served_in_order(arrival, acquired)
    assert holdings.check() == {"db": SLOTS}
    wait_for_idle(limits, "db")


def test_hundreds_of_coroutines_are_served_in_arrival_order_never_over(store_url: str) -> None:
    holdings = Holdings(slots={"db": SLOTS})
    acquired: dict[str, datetime] = {}

    async def main() -> list[str]:
        async with aio.Limits(store_url) as limits:
            await limits.create("db", slots=SLOTS)
            blocker = await limits.acquire("db", occupy=SLOTS, holder="blocker")

            async def waiter(holder: str) -> None:
                async with limits.concurrency("db", timeout=60, holder=holder) as lease:
                    acquired[holder] = lease.acquired_at
                    with holdings.holding("db"):
                        await holdings.wait_full_async("db", SLOTS)
                        await simulate_work_async(0.002)

            tasks = [asyncio.ensure_future(waiter(f"c{i:03d}")) for i in range(CROWD)]

            async def all_queued() -> LimitStatus | None:
                status = await limits.inspect("db")
                return status if len(status.waiters) >= CROWD else None

            status = await wait_until_async(all_queued, QUEUE_TIMEOUT, f"{CROWD} waiters")
            arrival = arrival_order(status)
            assert status.in_use == SLOTS  # nobody got past the blocker
            await blocker.release()
            await asyncio.wait_for(asyncio.gather(*tasks), 45)
            final = await limits.inspect("db")
            assert (final.in_use, final.waiters) == (0, [])
            return arrival

    arrival = asyncio.run(main())
    assert_served_in_order(arrival, acquired)
    assert holdings.check() == {"db": SLOTS}
