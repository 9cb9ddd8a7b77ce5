"""Limits.acquire(on_wait=...) reports where a queued request stands."""

from __future__ import annotations

import asyncio
import threading

import pytest

import sluice.aio
from conformance._helpers import wait_until_async
from sluice import InvalidRequest, Limits
from sluice.limits import WaitInfo


def test_on_wait_reports_the_blocking_limit_and_position(limits: Limits) -> None:
    limits.create("db", slots=1)
    held = limits.acquire("db")
    seen: list[WaitInfo] = []
    reported = threading.Event()

    def on_wait(info: WaitInfo) -> None:
        seen.append(info)
        reported.set()

    thread = threading.Thread(
        target=lambda: limits.acquire("db", timeout=10, on_wait=on_wait).release()
    )
    thread.start()
    assert reported.wait(10)
    held.release()
    thread.join(10)
    assert not thread.is_alive()
    assert seen[0].blocked_on == "db"
    assert seen[0].position == 1
    assert seen[0].names == ("db",)


def test_on_wait_is_not_called_when_granted_at_once(limits: Limits) -> None:
    limits.create("db", slots=1)
    calls: list[WaitInfo] = []
    limits.acquire("db", on_wait=calls.append).release()
    assert calls == []


def test_async_on_wait_and_bad_callbacks(store_url: str) -> None:
    async def main() -> list[WaitInfo]:
        async with sluice.aio.Limits(store_url) as alimits:
            await alimits.create("db", slots=1)
            held = await alimits.acquire("db")
            seen: list[WaitInfo] = []
            waiter = asyncio.ensure_future(alimits.acquire("db", on_wait=seen.append))

            async def reported() -> bool:
                return bool(seen)

            await wait_until_async(reported, 10, "on_wait to be called")
            await held.release()
            await (await waiter).release()
            with pytest.raises(InvalidRequest, match="on_wait"):
                await alimits.acquire("db", on_wait=42)  # type: ignore[arg-type]
            return seen

    seen = asyncio.run(main())
    assert seen[0].blocked_on == "db" and seen[0].position == 1
