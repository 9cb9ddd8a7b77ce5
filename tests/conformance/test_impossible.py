"""A change that makes a queued request impossible tells its waiter at once."""

from __future__ import annotations

import time

import pytest

from sluice import Limits
from sluice.errors import InvalidRequest

from ._helpers import Attempt, wait_for_waiters

pytestmark = pytest.mark.timeout(30)


def test_lowering_slots_below_a_waiters_occupy_fails_it_promptly_and_frees_the_queue(
    limits: Limits,
) -> None:
    limits.create("db", slots=2)
    held = limits.acquire("db", occupy=2)
    big = Attempt(limits, "db", occupy=2, holder="big").start()
    wait_for_waiters(limits, "db", 1)
    small = Attempt(limits, "db", occupy=1, holder="small").start()
    wait_for_waiters(limits, "db", 2)
    changed = time.monotonic()
    limits.update("db", slots=1)
    with pytest.raises(InvalidRequest, match="occupy=2"):
        big.result(timeout=5)
    assert big.finished_at is not None and big.finished_at - changed < 1.0
    assert [w.holder for w in limits.inspect("db").waiters] == ["small"]
    held.release()
    small.result(timeout=5).release()
    assert limits.inspect("db").in_use == 0


def test_removing_the_rate_fails_a_rate_waiter_promptly(limits: Limits) -> None:
    limits.create("api", slots=5, rate=0.2, burst=1)
    limits.rate_limit("api")  # the bucket is empty for the next 5 s
    waiter = Attempt(limits, "api", rate=True, holder="r").start()
    wait_for_waiters(limits, "api", 1)
    changed = time.monotonic()
    limits.update("api", rate=None)
    with pytest.raises(InvalidRequest, match="no rate"):
        waiter.passed(timeout=5)
    assert waiter.finished_at is not None and waiter.finished_at - changed < 1.0
