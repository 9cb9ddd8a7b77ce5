"""Fencing tokens, and revoked leases that their holders learn of at once.

Every grant has a fence (``Lease.fence``, ``Holder.fence``) greater than that of every
earlier grant, of that limit or any other, through resets, deletes and reopened clients.
A reset (or a forced delete) revokes leases; the store tells each holder's process
with its wake-ups, so ``lease.lost`` turns True and ``on_lost`` callbacks run at once,
not at the next renewal (a third of the lease TTL later: 10 s with the default 30 s).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from sluice import Limits, aio
from sluice.errors import LeaseLost

from ._helpers import Attempt, wait_for_waiters, wait_until
from ._procs import SPAWN, child, expect

pytestmark = pytest.mark.timeout(60)

TOLD_WITHIN = 2.0
"""Seconds within which a revoked holder must know: far below the renewal (10 s)."""


def test_fences_grow_with_every_grant_of_a_limit_and_across_limits(limits: Limits) -> None:
    limits.create("a", slots=3)
    limits.create("b", slots=3)
    fences = []
    for names in ["a", "b", ["a", "b"], "a", "b", "a"]:
        lease = limits.acquire(names)
        fences.append(lease.fence)
        lease.release()
    held = [limits.acquire("a") for _ in range(3)]
    fences += [lease.fence for lease in held]
    assert all(isinstance(f, int) and f > 0 for f in fences), fences
    assert fences == sorted(set(fences)), f"fences do not strictly grow: {fences}"
    assert all(lease.id.endswith(f".{lease.fence}") for lease in held)


def test_inspect_shows_each_holders_fence(limits: Limits) -> None:
    limits.create("db", slots=4)
    limits.create("other", slots=1)
    leases = [limits.acquire("db", occupy=2), limits.acquire(["db", "other"])]
    status = limits.inspect("db")
    assert sorted((h.lease_id, h.fence) for h in status.holders) == sorted(
        (lease.id, lease.fence) for lease in leases
    )
    assert [h.fence for h in limits.inspect("other").holders] == [leases[1].fence]


def test_a_hand_off_has_a_greater_fence_than_the_lease_it_follows(limits: Limits) -> None:
    limits.create("db", slots=1)
    first = limits.acquire("db")
    waiter = Attempt(limits, "db").start()
    wait_for_waiters(limits, "db", 1)
    first.release()
    assert waiter.granted.wait(10), "the waiter was never granted"
    assert waiter.lease is not None and waiter.lease.fence > first.fence
    waiter.lease.release()


def test_fences_keep_growing_through_reset_and_delete(limits: Limits) -> None:
    limits.create("db", slots=2)
    before = limits.acquire("db")
    assert limits.reset("db") == 1
    after_reset = limits.acquire("db")
    assert after_reset.fence > before.fence
    limits.delete("db", force=True)
    limits.create("db", slots=2)
    after_delete = limits.acquire("db")
    assert after_delete.fence > after_reset.fence
    after_delete.release()
    limits.delete("db")
    limits.create("db", slots=2)
    assert limits.acquire("db").fence > after_delete.fence


def test_fences_keep_growing_for_a_new_client_of_the_store(cross_process_url: str) -> None:
    with Limits(cross_process_url) as limits:
        limits.create("db", slots=1)
        limits.acquire("db").release()
        last = limits.acquire("db")
        last.release()
    with Limits(cross_process_url) as limits:
        assert limits.acquire("db").fence > last.fence


def test_a_reset_tells_the_holder_at_once(limits: Limits) -> None:
    limits.create("db", slots=2)  # lease TTL 30 s: the next renewal is 10 s away
    limits.create("other", slots=1)
    lease = limits.acquire(["db", "other"])
    kept = limits.acquire("db")
    told: list[tuple[float, LeaseLost]] = []
    lease.on_lost(lambda error: told.append((time.monotonic(), error)))
    reset_at = time.monotonic()
    assert limits.reset("db") == 2
    wait_until(lambda: lease.lost and kept.lost, TOLD_WITHIN, "the holders to learn at once")
    assert len(told) == 1 and told[0][0] - reset_at < TOLD_WITHIN
    error = told[0][1]
    assert (error.lease_id, error.names) == (lease.id, ("db", "other"))
    assert "revoked" in error.reason
    with pytest.raises(LeaseLost):
        lease.release()
    assert len(told) == 1  # told once
    late: list[LeaseLost] = []
    lease.on_lost(late.append)  # already lost: called at once
    assert [e.lease_id for e in late] == [lease.id]
    assert limits.inspect("other").in_use == 0


def test_a_forced_delete_tells_the_holder_at_once(limits: Limits) -> None:
    limits.create("db", slots=1)
    lease = limits.acquire("db")
    limits.delete("db", force=True)
    wait_until(lambda: lease.lost, TOLD_WITHIN, "the holder to learn at once")
    with pytest.raises(LeaseLost):
        lease.release()


def test_a_lease_released_while_held_never_calls_on_lost(limits: Limits) -> None:
    limits.create("db", slots=1)
    lease = limits.acquire("db")
    told: list[LeaseLost] = []
    lease.on_lost(told.append)
    lease.release()
    assert limits.reset("db") == 0
    assert told == [] and not lease.lost


def test_a_reset_tells_an_async_holder_at_once(store_url: str) -> None:
    async def main() -> None:
        async with aio.Limits(store_url) as limits:
            await limits.create("db", slots=1)
            lost = asyncio.Event()
            loop = asyncio.get_running_loop()
            with pytest.raises(LeaseLost):  # leaving the block says so
                async with limits.concurrency("db") as lease:
                    lease.on_lost(lambda error: loop.call_soon_threadsafe(lost.set))
                    assert await limits.reset("db") == 1
                    await asyncio.wait_for(lost.wait(), TOLD_WITHIN)
                    assert lease.lost
            assert (await limits.inspect("db")).in_use == 0

    asyncio.run(main())


def hold_and_report_loss(url: str, results: Any) -> None:
    """In a child: hold "db", report ('held', lease id, fence), then ('lost', when, reason)
    as soon as the lease is found lost; give up after 60 s."""
    told = threading.Event()

    def on_lost(error: LeaseLost) -> None:
        results.put(("lost", time.monotonic(), error.reason))
        told.set()

    with Limits(url) as limits:
        lease = limits.acquire("db", timeout=30)
        lease.on_lost(on_lost)
        results.put(("held", lease.id, lease.fence))
        told.wait(60)


def test_a_reset_tells_a_holder_in_another_process_at_once(cross_process_url: str) -> None:
    with Limits(cross_process_url) as limits:
        limits.create("db", slots=1)  # lease TTL 30 s: the child renews every 10 s
        results = SPAWN.Queue()
        with child(hold_and_report_loss, cross_process_url, results) as proc:
            _, lease_id, fence = expect(results, "held")
            assert [(h.lease_id, h.fence) for h in limits.inspect("db").holders] == [
                (lease_id, fence)
            ]
            reset_at = time.monotonic()
            assert limits.reset("db") == 1
            _, told_at, reason = expect(results, "lost", timeout=TOLD_WITHIN)
            assert told_at - reset_at < TOLD_WITHIN and "revoked" in reason
            proc.join(10)
            assert proc.exitcode == 0
        assert limits.acquire("db", timeout=0).fence > fence
