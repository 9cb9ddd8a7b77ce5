"""Semantics 6 and 3: processes killed with SIGKILL leave nothing behind on one host.

A holder's slots go to a waiting process within 1 s, long before its lease TTL
(30 s here); a dead waiter leaves the queue so the next in line proceeds.
Only for stores that several processes share (``cross_process`` in the table).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from sluice import Limits
from sluice.errors import AcquireTimeout

from . import _workers
from ._helpers import Attempt, wait_for_idle, wait_for_waiters, wait_until
from ._procs import SPAWN, child, expect

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

CRASH_BOUND = 1.0
TTL = 30.0


def test_a_killed_holders_slots_go_to_a_waiter_within_a_second(
    mp_limits: Limits, cross_process_url: str
) -> None:
    limits = mp_limits
    limits.create("db", slots=3, lease_ttl=TTL)
    limits.create("other", slots=3, lease_ttl=TTL)
    results = SPAWN.Queue()
    with child(_workers.hold_forever, cross_process_url, ["db", "other"], 3, results) as proc:
        _, pid, lease_id = expect(results, "held")
        status = limits.inspect("db")
        assert status.in_use == 3
        assert [(h.lease_id, h.pid) for h in status.holders] == [(lease_id, pid)]
        waiter = Attempt(limits, ["db", "other"], occupy=2, timeout=TTL / 2).start()
        wait_for_waiters(limits, "db", 1)
        time.sleep(0.2)
        assert not waiter.granted.is_set()

        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        lease = waiter.result(timeout=TTL)
        assert waiter.granted_at is not None
        took = waiter.granted_at - killed_at
        assert took < CRASH_BOUND, f"slots of a killed holder came back after {took:.3f}s"
        proc.join(5)
        for name in ("db", "other"):
            holders = limits.inspect(name).holders
            assert [h.lease_id for h in holders] == [lease.id], name
        assert limits.inspect("db").in_use == 2
        lease.release()
    for name in ("db", "other"):
        wait_for_idle(limits, name)


def test_a_killed_holders_slots_are_free_without_any_waiter(
    mp_limits: Limits, cross_process_url: str
) -> None:
    limits = mp_limits
    limits.create("db", slots=2, lease_ttl=TTL)
    results = SPAWN.Queue()
    with child(_workers.hold_forever, cross_process_url, ["db"], 2, results) as proc:
        _, pid, _ = expect(results, "held")
        with pytest.raises(AcquireTimeout):
            limits.acquire("db", timeout=0)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        proc.join(5)

        def try_once() -> object:
            try:
                return limits.acquire("db", occupy=2, timeout=0)
            except AcquireTimeout:
                return None

        lease = wait_until(try_once, CRASH_BOUND + 1.0, "the killed holder's slots")
        took = time.monotonic() - killed_at
        assert took < CRASH_BOUND + 0.1, f"slots came back after {took:.3f}s"
        status = limits.inspect("db")
        assert [h.pid for h in status.holders] == [os.getpid()]
        lease.release()  # type: ignore[attr-defined]
    wait_for_idle(limits, "db")


def test_a_killed_waiter_at_the_head_leaves_the_queue(
    mp_limits: Limits, cross_process_url: str
) -> None:
    limits = mp_limits
    limits.create("db", slots=2, lease_ttl=TTL)
    held = limits.acquire("db", occupy=2)
    results = SPAWN.Queue()
    with child(
        _workers.acquire_and_report, cross_process_url, ["db"], 2, TTL, "doomed", results
    ) as proc:
        status = wait_for_waiters(limits, "db", 1, timeout=30)
        assert [(w.holder, w.pid, w.position) for w in status.waiters] == [("doomed", proc.pid, 1)]
        behind = Attempt(limits, "db", occupy=1, holder="behind", timeout=TTL / 2).start()
        status = wait_for_waiters(limits, "db", 2)
        assert [w.holder for w in status.waiters] == ["doomed", "behind"]

        killed_at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        held.release()
        lease = behind.result(timeout=TTL)
        assert behind.granted_at is not None
        took = behind.granted_at - killed_at
        assert took < CRASH_BOUND, f"the next waiter got in {took:.3f}s after the head died"
        proc.join(5)
        status = limits.inspect("db")
        assert status.waiters == []
        assert [h.holder for h in status.holders] == ["behind"]
        lease.release()
    wait_for_idle(limits, "db")


def test_a_killed_waiter_disappears_from_inspect(mp_limits: Limits, cross_process_url: str) -> None:
    limits = mp_limits
    limits.create("db", slots=1, lease_ttl=TTL)
    held = limits.acquire("db")
    results = SPAWN.Queue()
    with child(
        _workers.acquire_and_report, cross_process_url, ["db"], 1, TTL, "doomed", results
    ) as proc:
        wait_for_waiters(limits, "db", 1, timeout=30)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(5)
        wait_until(lambda: not limits.inspect("db").waiters, CRASH_BOUND, "the dead waiter to go")
    held.release()
    limits.acquire("db", timeout=0).release()
    wait_for_idle(limits, "db")
