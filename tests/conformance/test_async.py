"""The async twins (``sluice.aio``): same names, same semantics, coroutines throughout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from sluice import Limit, Limits, LimitStatus, aio
from sluice.errors import (
    AcquireTimeout,
    InvalidRequest,
    LeaseLost,
    LimitBusy,
    LimitExists,
    LimitNotFound,
    MissingLimitWarning,
)

from ._helpers import LATE_BOUND, WAKE_BOUND, wait_until_async

pytestmark = pytest.mark.timeout(60)


def run(store_url: str, body: Callable[[aio.Limits], Awaitable[None]]) -> None:
    async def main() -> None:
        async with aio.Limits(store_url) as limits:
            await body(limits)

    asyncio.run(main())


async def wait_waiters(limits: aio.Limits, name: str, count: int) -> None:
    async def probe() -> bool:
        return len((await limits.inspect(name)).waiters) >= count

    await wait_until_async(probe, 5, f"{count} waiter(s) on {name!r}")


def test_admin_coroutines(store_url: str) -> None:
    async def body(limits: aio.Limits) -> None:
        made = await limits.create("db", slots=2)
        assert made == Limit("db", 2, None, None, True, 30.0)
        with pytest.raises(LimitExists):
            await limits.create("db", slots=3)
        assert await limits.ensure("db", slots=9) == made
        assert await limits.ensure("api", rate=2.5) == Limit("api", None, 2.5, 3, True, 30.0)
        assert await limits.get("db") == made
        assert [lim.name for lim in await limits.list()] == ["api", "db"]
        assert (await limits.update("db", slots=4)).slots == 4
        with pytest.raises(InvalidRequest):
            await limits.update("db")
        assert (await limits.disable("db")).active is False
        assert (await limits.enable("db")).active is True
        status = await limits.inspect("db")
        assert isinstance(status, LimitStatus)
        assert (status.in_use, status.holders, status.waiters) == (0, [], [])
        lease = await limits.acquire("db", occupy=3)
        with pytest.raises(LimitBusy):
            await limits.delete("db")
        assert await limits.reset("db") == 1
        with pytest.raises(LeaseLost):
            await lease.release()
        await limits.delete("db")
        with pytest.raises(LimitNotFound):
            await limits.get("db")

    run(store_url, body)


def test_sync_and_async_clients_see_one_store(store_url: str, limits: Limits) -> None:
    limits.create("db", slots=2)

    async def body(alimits: aio.Limits) -> None:
        lease = await alimits.acquire("db")
        assert isinstance(lease, aio.Lease)
        assert limits.inspect("db").in_use == 1
        assert (await alimits.inspect("db")).holders[0].lease_id == lease.id
        await lease.release()
        assert limits.inspect("db").in_use == 0

    run(store_url, body)


def test_async_with_concurrency(store_url: str) -> None:
    async def body(limits: aio.Limits) -> None:
        await limits.create("db", slots=3)
        async with limits.concurrency("db", occupy=2, holder="async-job") as lease:
            assert lease.names == ("db",)
            assert lease.occupy == 2
            assert lease.holder == "async-job"
            assert lease.lost is False
            assert lease.acquired_at < lease.expires_at
            status = await limits.inspect("db")
            assert status.in_use == 2
            assert [h.holder for h in status.holders] == ["async-job"]
        assert (await limits.inspect("db")).in_use == 0

        class Boom(Exception):
            pass

        with pytest.raises(Boom):
            async with limits.concurrency(["db", "db"], occupy=3):
                assert (await limits.inspect("db")).in_use == 3
                raise Boom
        assert (await limits.inspect("db")).in_use == 0

    run(store_url, body)


def test_async_acquire_release_is_idempotent(store_url: str) -> None:
    async def body(limits: aio.Limits) -> None:
        await limits.create("db", slots=1)
        lease = await limits.acquire("db", timeout=0)
        await lease.release()
        await lease.release()
        assert (await limits.inspect("db")).in_use == 0

    run(store_url, body)


def test_async_rate_limit_waits_exactly(store_url: str) -> None:
    async def body(limits: aio.Limits) -> None:
        await limits.create("api", rate=5.0, burst=1)
        before = time.monotonic()
        await limits.rate_limit("api")
        after_first = time.monotonic()
        await limits.rate_limit("api", timeout=5)
        after = time.monotonic()
        assert after - before >= 0.2 - 0.005
        assert after - after_first <= 0.2 + LATE_BOUND
        with pytest.raises(AcquireTimeout):
            await limits.rate_limit("api", timeout=0)

    run(store_url, body)


def test_an_async_waiter_is_woken_and_the_loop_keeps_running(store_url: str) -> None:
    async def body(limits: aio.Limits) -> None:
        await limits.create("db", slots=1)
        held = await limits.acquire("db")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        waiter = asyncio.create_task(limits.acquire("db", timeout=10))
        await wait_waiters(limits, "db", 1)
        ticks_before = ticks

        async def loop_ran() -> bool:
            return ticks - ticks_before >= 10

        # A waiter that blocked the loop would stop the ticker (and this probe with it).
        await wait_until_async(loop_ran, 5, "10 ticks of the loop while the waiter waits")
        assert not waiter.done()
        released_at = time.monotonic()
        await held.release()
        lease = await asyncio.wait_for(waiter, 5)
        assert time.monotonic() - released_at < WAKE_BOUND
        await lease.release()
        tick_task.cancel()

    run(store_url, body)


def test_async_waiters_are_served_in_arrival_order(store_url: str) -> None:
    async def body(limits: aio.Limits) -> None:
        await limits.create("db", slots=1)
        held = await limits.acquire("db")
        order: list[int] = []

        async def waiter(i: int) -> None:
            async with limits.concurrency("db", timeout=10, holder=f"t{i}"):
                order.append(i)

        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(waiter(i)))
            await wait_waiters(limits, "db", i + 1)
        assert [w.holder for w in (await limits.inspect("db")).waiters] == [
            f"t{i}" for i in range(5)
        ]
        await held.release()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert order == list(range(5))

    run(store_url, body)


def test_async_timeout_reports_like_sync(store_url: str) -> None:
    async def body(limits: aio.Limits) -> None:
        await limits.create("db", slots=1)
        held = await limits.acquire("db")
        started = time.monotonic()
        with pytest.raises(AcquireTimeout) as info:
            await limits.acquire("db", timeout=0.3)
        assert 0.3 - 0.01 <= time.monotonic() - started < 0.8
        assert info.value.limits == ("db",)
        assert info.value.position == 1
        assert info.value.blocked_on == "db"
        assert (await limits.inspect("db")).waiters == []
        with pytest.raises(AcquireTimeout):
            await limits.acquire("db", timeout=0)
        await held.release()

    run(store_url, body)


def test_leaving_async_with_of_a_lost_lease_raises(store_url: str) -> None:
    async def body(limits: aio.Limits) -> None:
        await limits.create("db", slots=1)
        with pytest.raises(LeaseLost) as info:
            async with limits.concurrency("db") as lease:
                assert await limits.reset("db") == 1
        assert info.value.lease_id == lease.id
        assert lease.lost is True
        assert (await limits.inspect("db")).in_use == 0

    run(store_url, body)


def test_async_missing_and_bad_input(store_url: str) -> None:
    async def body(limits: aio.Limits) -> None:
        await limits.create("db", slots=2)
        with pytest.raises(LimitNotFound) as info:
            await limits.acquire(["db", "ghost"])
        assert info.value.names == ("ghost",)
        with pytest.warns(MissingLimitWarning, match="ghost"):
            lease = await limits.acquire(["db", "ghost"], missing="warn")
        assert lease.names == ("db",)
        await lease.release()
        lease = await limits.acquire(["db", "ghost"], missing="ignore")
        assert lease.names == ("db",)
        await lease.release()
        with pytest.raises(InvalidRequest):
            await limits.acquire("db", occupy=3)
        with pytest.raises(InvalidRequest):
            await limits.acquire("db", occupy=0)
        with pytest.raises(InvalidRequest, match="db"):
            await limits.rate_limit("db")
        with pytest.raises(InvalidRequest):
            await limits.create("bad name", slots=1)
        status = await limits.inspect("db")
        assert (status.in_use, status.waiters) == (0, [])
        assert [lim.name for lim in await limits.list()] == ["db"]

    run(store_url, body)


def test_aclose_and_async_context_manager(store_url: str) -> None:
    async def main() -> None:
        limits = aio.Limits(store_url)
        await limits.create("db", slots=1)
        lease = await limits.acquire("db")
        async with aio.Limits(store_url) as again:
            assert isinstance(again, aio.Limits)
            assert (await again.get("db")).slots == 1
            assert (await again.inspect("db")).in_use == 1
        await lease.release()  # closing another client left this one working
        assert (await limits.inspect("db")).in_use == 0
        await limits.aclose()

    asyncio.run(main())
