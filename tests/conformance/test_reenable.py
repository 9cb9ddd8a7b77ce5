"""A limit enabled (or created) while requests that name it wait: they wait for it too,
at the place their arrival gives them, and never go through on the other limits alone."""

from __future__ import annotations

import pytest

from sluice import Limits

from ._helpers import Attempt, wait_for_waiters

pytestmark = pytest.mark.timeout(30)


def test_a_waiter_on_a_disabled_limit_also_waits_for_it_once_enabled(limits: Limits) -> None:
    limits.create("a", slots=1)
    limits.create("b", slots=1)
    hold_a = limits.acquire("a")  # counted on a
    limits.disable("a")
    hold_b = limits.acquire("b")
    waiter = Attempt(limits, ["a", "b"], holder="w").start()  # a admits it; it waits on b
    wait_for_waiters(limits, "b", 1)
    assert limits.inspect("a").waiters == []
    limits.enable("a")  # hold_a's unit counts again: a is full
    assert [w.holder for w in limits.inspect("a").waiters] == ["w"]
    hold_b.release()
    # b is free, but a is not: the waiter must not go through on b alone
    assert not waiter.granted.wait(0.5)
    assert limits.inspect("b").in_use == 0
    hold_a.release()
    lease = waiter.result(timeout=5)
    assert sorted(lease.names) == ["a", "b"]
    assert limits.inspect("a").in_use == 1
    assert limits.inspect("b").in_use == 1
    lease.release()


def test_a_waiter_that_ignored_a_missing_limit_waits_for_it_once_created(
    limits: Limits,
) -> None:
    limits.create("b", slots=1)
    hold_b = limits.acquire("b")
    waiter = Attempt(limits, ["a", "b"], holder="w", missing="ignore").start()
    wait_for_waiters(limits, "b", 1)
    limits.create("a", slots=1)
    assert [w.holder for w in limits.inspect("a").waiters] == ["w"]
    newcomer = Attempt(limits, "a", holder="n").start()  # arrives later: queues behind w
    wait_for_waiters(limits, "a", 2)
    hold_b.release()
    lease = waiter.result(timeout=5)
    assert sorted(lease.names) == ["a", "b"]
    assert not newcomer.granted.wait(0.3)  # w holds a's only slot
    lease.release()
    newcomer.result(timeout=5).release()
