"""Redis and PostgreSQL: a server that stops answering (issue 14, item 2).

The test's own server (never the shared one) is frozen with SIGSTOP: connections stay
open and nothing is answered. Every call still returns within its bound: a timeout
plus TIMEOUT_GRACE, else the per-step deadline (SLUICE_STEP_TIMEOUT); on the old code
a call waited for the server (30 s per try on Redis, without bound on PostgreSQL).
Once the server is thawed, everything works again.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from conftest import require_module
from sluice import Limits, aio
from sluice.errors import AcquireTimeout, StoreUnavailable
from sluice.limits.waiting import TIMEOUT_GRACE
from sluice.store.deadline import ENV_STEP_TIMEOUT

from ._servers import OwnPostgres, OwnRedis, own_postgres_or_skip, own_redis_or_skip

STEP = 1.0
"""The per-step deadline these tests run with (SLUICE_STEP_TIMEOUT)."""
SLACK = 0.4
"""Seconds of scheduling noise allowed on top of a documented bound."""
NO_TIMEOUT_BOUND = 2 * STEP + TIMEOUT_GRACE + SLACK
"""A call without a timeout: a round already under way, then its own, each a step."""
ALL_CALLS_BOUND = 2 * (1 + TIMEOUT_GRACE + TIMEOUT_GRACE + NO_TIMEOUT_BOUND + STEP) + STEP + 5
"""Seconds all the calls made during a freeze may take together."""


class Freezable(Protocol):
    def pause(self) -> None: ...
    def resume(self) -> None: ...


@pytest.fixture(autouse=True)
def _short_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_STEP_TIMEOUT, str(STEP))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[str, OwnRedis]]:
    require_module("redis", "redis")
    server = own_redis_or_skip(tmp_path)
    try:
        yield f"redis://127.0.0.1:{server.port}/0", server
    finally:
        server.kill()


@pytest.fixture
def postgres_server() -> Iterator[tuple[str, OwnPostgres]]:
    require_module("psycopg", "postgres")
    server = own_postgres_or_skip()
    try:
        yield server.url, server
    finally:
        server.stop()


Outcome = tuple[BaseException | None, float]


def timed(call: Callable[[], Any]) -> Outcome:
    """What ``call()`` raised (None: it returned) and how long it took."""
    started = time.monotonic()
    try:
        call()
    except BaseException as exc:  # asserted by the caller
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


async def timed_async(call: Callable[[], Any]) -> Outcome:
    started = time.monotonic()
    try:
        await call()
    except BaseException as exc:  # asserted by the caller
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def _during_a_freeze(url: str, limits: Limits, server: Freezable) -> dict[str, Outcome]:
    """Every kind of call, sync and async, while the server is frozen; thawed after.

    The calls run on a thread of their own, so that a call that waits for the server
    (the old code) fails the test instead of hanging it.
    """
    results: dict[str, Outcome] = {}

    async def calls_async() -> None:
        async with aio.Limits(url) as alimits:  # (the same store, connected already)
            for name, timeout in (("(timeout=1)", 1.0), ("(timeout=0)", 0.0), ("()", None)):
                results[f"async acquire{name}"] = await timed_async(
                    functools.partial(alimits.acquire, "db", timeout=timeout)
                )
            results["async inspect"] = await timed_async(lambda: alimits.inspect("db"))

    def calls() -> None:
        results["acquire(timeout=1)"] = timed(lambda: limits.acquire("db", timeout=1))
        results["acquire(timeout=0)"] = timed(lambda: limits.acquire("db", timeout=0))
        results["acquire()"] = timed(lambda: limits.acquire("db"))
        results["inspect"] = timed(lambda: limits.inspect("db"))
        with Limits(url) as fresh:  # a client that must connect to the frozen server
            results["new client's inspect"] = timed(lambda: fresh.inspect("db"))
        asyncio.run(calls_async())

    runner = threading.Thread(target=calls, daemon=True)
    server.pause()
    try:
        runner.start()
        runner.join(ALL_CALLS_BOUND)
    finally:
        server.resume()
    assert not runner.is_alive(), (
        f"the calls were still waiting for the frozen server after {ALL_CALLS_BOUND:g} s;"
        f" finished: {results}"
    )
    return results


def _check(results: dict[str, Outcome]) -> None:
    bounds = {"acquire(timeout=1)": 1 + TIMEOUT_GRACE, "acquire(timeout=0)": TIMEOUT_GRACE}
    for name, (error, took) in results.items():
        bound = next((b for key, b in bounds.items() if name.endswith(key)), NO_TIMEOUT_BOUND)
        if "inspect" in name:
            bound = STEP  # one step
        # without a timeout, only the step deadline can end the call
        timed_out = "acquire(timeout=" in name
        expected = (AcquireTimeout, StoreUnavailable) if timed_out else (StoreUnavailable,)
        assert isinstance(error, expected), f"{name}: {error!r}"
        assert took <= bound + SLACK, f"{name} took {took:.2f} s, over its bound {bound:.2f} s"


def _frozen_server_case(url: str, server: Freezable) -> None:
    with Limits(url) as limits:
        limits.create("db", slots=1)
        held = limits.acquire("db")
        results = _during_a_freeze(url, limits, server)
        # thawed: everything works again
        assert limits.inspect("db").in_use == 1
        held.release()
        limits.acquire("db", timeout=5).release()
    _check(results)


def test_calls_stay_bounded_while_redis_is_frozen(redis_server: tuple[str, OwnRedis]) -> None:
    url, server = redis_server
    _frozen_server_case(url, server)


def test_calls_stay_bounded_while_postgres_is_frozen(
    postgres_server: tuple[str, OwnPostgres],
) -> None:
    url, server = postgres_server
    _frozen_server_case(url, server)
