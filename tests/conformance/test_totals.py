"""Limit totals: every process's grants, units, waits, timeouts and reclaimed leases,
counted by the store itself inside the steps that cause them (``inspect().totals``)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from conftest import StoreEntry
from sluice import LeaseLost, Limits, aio
from sluice.errors import AcquireTimeout, InvalidRequest, LimitNotFound
from sluice.limits.model import WAIT_BUCKETS, LimitTotals, wait_bucket

from . import _workers
from ._helpers import Attempt, Holdings, stays, wait_for_waiters, wait_until, wait_until_async
from ._procs import SPAWN, child, expect, hung_holder

pytestmark = pytest.mark.timeout(60)

BUCKETS = len(WAIT_BUCKETS) + 1


def totals(limits: Limits, name: str) -> LimitTotals:
    return limits.inspect(name).totals


def test_a_new_limit_has_counted_nothing(limits: Limits) -> None:
    limits.create("db", slots=2)
    assert totals(limits, "db") == LimitTotals()
    assert totals(limits, "db").wait_buckets == (0,) * BUCKETS


def test_grants_at_once_count_units_and_wait_zero(limits: Limits) -> None:
    limits.create("db", slots=5)
    with limits.concurrency("db"):
        pass
    with limits.concurrency("db", occupy=3):
        pass
    lease = limits.acquire("db")
    lease.release()
    t = totals(limits, "db")
    assert (t.grants, t.granted_units, t.timeouts, t.expired_leases_reclaimed) == (3, 5, 0, 0)
    assert t.wait_buckets == (3,) + (0,) * (BUCKETS - 1)
    assert t.wait_seconds == pytest.approx(0.0, abs=0.01)


def test_rate_grants_count_their_units(limits: Limits) -> None:
    limits.create("api", rate=1000, burst=10)
    limits.rate_limit("api", occupy=4)
    limits.rate_limit("api")
    t = totals(limits, "api")
    assert (t.grants, t.granted_units) == (2, 5)


def test_a_grant_on_several_limits_counts_on_each(limits: Limits) -> None:
    limits.create("a", slots=2)
    limits.create("b", slots=2)
    with limits.concurrency(["a", "b"], occupy=2):
        pass
    for name in ("a", "b"):
        t = totals(limits, name)
        assert (t.grants, t.granted_units) == (1, 2), name


def test_a_queued_grant_records_how_long_it_waited(limits: Limits) -> None:
    limits.create("db", slots=1)
    held = limits.acquire("db")
    waiter = Attempt(limits, "db", timeout=10).start()
    wait_for_waiters(limits, "db", 1)
    stays(lambda: not waiter.granted.is_set(), 0.3, "the waiter waiting")  # its wait
    held.release()
    waiter.result().release()
    t = totals(limits, "db")
    assert t.grants == 2
    assert 0.25 <= t.wait_seconds < 5.0, t
    queued_bucket = wait_bucket(t.wait_seconds)
    assert WAIT_BUCKETS[queued_bucket] >= 0.3
    assert t.wait_buckets[0] == 1  # the holder, at once
    assert t.wait_buckets[queued_bucket] == 1  # the waiter, handed the slot
    assert sum(t.wait_buckets) == 2


def test_a_timeout_counts_on_the_limit_it_waited_behind(limits: Limits) -> None:
    limits.create("a", slots=1)
    limits.create("b", slots=1)
    held = limits.acquire("b")
    with pytest.raises(AcquireTimeout) as info:
        limits.acquire(["a", "b"], timeout=0.2)
    assert info.value.blocked_on == "b"
    assert totals(limits, "b").timeouts == 1
    assert totals(limits, "a").timeouts == 0
    with pytest.raises(AcquireTimeout):
        limits.acquire("b", timeout=0)
    assert totals(limits, "b").timeouts == 2
    assert totals(limits, "b").grants == 1  # the holder; the timed-out ones got nothing
    held.release()


def test_a_cancelled_waiter_is_not_a_timeout(store_url: str) -> None:
    async def main() -> LimitTotals:
        limits = aio.Limits(store_url)
        try:
            await limits.create("db", slots=1)
            held = await limits.acquire("db")
            waiter = asyncio.ensure_future(limits.acquire("db", timeout=10))

            async def queued() -> bool:
                return bool((await limits.inspect("db")).waiters)

            await wait_until_async(queued, 5, "the waiter to queue")
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await held.release()
            return (await limits.inspect("db")).totals
        finally:
            await limits.aclose()

    t = asyncio.run(main())
    assert (t.grants, t.timeouts) == (1, 0)


def test_an_async_timeout_is_counted(store_url: str) -> None:
    async def main() -> LimitTotals:
        limits = aio.Limits(store_url)
        try:
            await limits.create("db", slots=1)
            held = await limits.acquire("db")
            with pytest.raises(AcquireTimeout):
                await limits.acquire("db", timeout=0.1)
            await held.release()
            return (await limits.inspect("db")).totals
        finally:
            await limits.aclose()

    assert asyncio.run(main()).timeouts == 1


def test_an_expired_lease_reclaimed_is_counted_once(
    mp_limits: Limits, cross_process_url: str
) -> None:
    limits = mp_limits
    limits.create("db", slots=2, lease_ttl=1)
    limits.create("other", slots=2, lease_ttl=1)
    with hung_holder(limits, cross_process_url, ["db", "other"]) as hung:

        def reclaimed() -> bool | None:
            try:  # a write step that needs the units: it reclaims the lapsed lease
                limits.acquire(["db", "other"], occupy=2, timeout=0).release()
            except AcquireTimeout:
                return None
            return totals(limits, "db").expired_leases_reclaimed == 1

        assert wait_until(reclaimed, 10, "the hung holder's lease to expire and be reclaimed")
        assert limits.inspect("db").holders == []
        assert totals(limits, "other").expired_leases_reclaimed == 1
        outcome = hung.thaw_and_leave()
        assert outcome[:3] == ("lease-lost", True, hung.lease_id), outcome
        assert sorted(outcome[3]) == ["db", "other"]
    limits.acquire("db").release()  # later steps do not count it again
    t = totals(limits, "db")
    assert (t.expired_leases_reclaimed, t.grants) == (1, 3)


def test_released_leases_are_not_counted_as_reclaimed(limits: Limits) -> None:
    limits.create("db", slots=2, lease_ttl=1)
    for _ in range(3):
        limits.acquire("db").release()
    # past the TTL of every one of them, inspected all along: nothing was reclaimed
    stays(lambda: totals(limits, "db").expired_leases_reclaimed == 0, 1.2, "no lease reclaimed")


@pytest.mark.slow
def test_a_killed_holder_is_counted_as_reclaimed(
    mp_limits: Limits, cross_process_url: str, cross_process_entry: StoreEntry
) -> None:
    limits = mp_limits
    ttl = 30.0 if cross_process_entry.sees_local_deaths else 2.0
    limits.create("db", slots=2, lease_ttl=ttl)
    results = SPAWN.Queue()
    with child(_workers.hold_forever, cross_process_url, ["db"], 2, results) as proc:
        _, pid, _ = expect(results, "held")
        os.kill(pid, signal.SIGKILL)
        proc.join(5)
        lease = limits.acquire("db", occupy=2, timeout=ttl + 5)
        lease.release()
    t = totals(limits, "db")
    assert t.expired_leases_reclaimed == 1
    assert (t.grants, t.granted_units) == (2, 4)  # the child's, then ours


def test_other_processes_grants_are_counted(mp_limits: Limits, cross_process_url: str) -> None:
    limits = mp_limits
    limits.create("db", slots=2)
    results = SPAWN.Queue()
    with child(_workers.hold_forever, cross_process_url, ["db"], 2, results):
        expect(results, "held")
        t = totals(limits, "db")
        assert (t.grants, t.granted_units) == (1, 2)


def test_a_disabled_limit_counts_nothing(limits: Limits) -> None:
    limits.create("db", slots=1)
    limits.disable("db")
    limits.acquire("db").release()
    assert totals(limits, "db").grants == 0
    limits.enable("db")
    limits.acquire("db").release()
    assert totals(limits, "db").grants == 1


def test_failed_calls_count_nothing(limits: Limits) -> None:
    limits.create("db", slots=2)
    with pytest.raises(InvalidRequest):
        limits.acquire("db", occupy=3)
    with pytest.raises(LimitNotFound):
        limits.acquire(["db", "nope"])
    assert totals(limits, "db") == LimitTotals()


def test_admin_changes_keep_totals_and_delete_forgets_them(limits: Limits) -> None:
    limits.create("db", slots=2)
    limits.acquire("db").release()
    limits.update("db", slots=4)
    limits.reset("db")
    limits.disable("db")
    limits.enable("db")
    assert totals(limits, "db").grants == 1
    limits.delete("db")
    limits.create("db", slots=2)
    assert totals(limits, "db") == LimitTotals()


def test_reset_revoking_leases_is_not_counted_as_reclaimed(limits: Limits) -> None:
    limits.create("db", slots=2)
    lease = limits.acquire("db")
    assert limits.reset("db") == 1
    with pytest.raises(LeaseLost):
        lease.release()
    assert totals(limits, "db").expired_leases_reclaimed == 0


def test_many_threads_count_every_grant(limits: Limits) -> None:
    limits.create("db", slots=3)
    holdings = Holdings(slots={"db": 3})
    attempts = [
        Attempt(limits, "db", timeout=30, keep=False, holdings=holdings).start() for _ in range(24)
    ]
    for attempt in attempts:
        attempt.passed()
    assert holdings.count("db") == 24
    holdings.check()
    t = totals(limits, "db")
    assert t.grants == 24
    assert t.granted_units == 24
    assert sum(t.wait_buckets) == 24
    assert t.timeouts == 0
