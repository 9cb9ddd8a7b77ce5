"""Semantics 6 and 3: processes killed with SIGKILL leave nothing behind.

On a store that sees local deaths (SQLite), a holder's slots go to a waiting
process within 1 s, long before its lease TTL (30 s here). On a store shared
across hosts (Redis, PostgreSQL), lease expiry is the only crash detection:
with a 2 s TTL the slots come back within the TTL plus a round trip. Either
way a dead waiter leaves the queue so the next in line proceeds. Only for
stores that several processes share (``cross_process`` in the table).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import pytest

from conftest import StoreEntry
from sluice import Limits
from sluice.errors import AcquireTimeout

from . import _workers
from ._helpers import Attempt, stays, wait_for_idle, wait_for_waiters, wait_until
from ._procs import SPAWN, child, expect

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

WAIT = 30.0  # how long a surviving waiter is prepared to wait


@dataclass(frozen=True)
class CrashTiming:
    """The lease TTL a test uses and how soon a dead process's units must come back."""

    ttl: float
    bound: float


@pytest.fixture
def timing(cross_process_entry: StoreEntry) -> CrashTiming:
    """Local death detection: within 1 s of a 30 s TTL; lease expiry: 2 s TTL + 1 s."""
    if cross_process_entry.sees_local_deaths:
        return CrashTiming(ttl=30.0, bound=1.0)
    return CrashTiming(ttl=2.0, bound=3.0)


def test_a_killed_holders_slots_go_to_a_waiter_within_a_second(
    mp_limits: Limits, cross_process_url: str, timing: CrashTiming
) -> None:
    limits = mp_limits
    limits.create("db", slots=3, lease_ttl=timing.ttl)
    limits.create("other", slots=3, lease_ttl=timing.ttl)
    results = SPAWN.Queue()
    with child(_workers.hold_forever, cross_process_url, ["db", "other"], 3, results) as proc:
        _, pid, lease_id = expect(results, "held")
        status = limits.inspect("db")
        assert status.in_use == 3
        assert [(h.lease_id, h.pid) for h in status.holders] == [(lease_id, pid)]
        waiter = Attempt(limits, ["db", "other"], occupy=2, timeout=WAIT).start()
        wait_for_waiters(limits, "db", 1)
        stays(lambda: not waiter.granted.is_set(), 0.2, "the waiter waiting behind a live holder")

        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        lease = waiter.result(timeout=WAIT)
        assert waiter.granted_at is not None
        took = waiter.granted_at - killed_at
        assert took < timing.bound, f"slots of a killed holder came back after {took:.3f}s"
        proc.join(5)
        for name in ("db", "other"):
            holders = limits.inspect(name).holders
            assert [h.lease_id for h in holders] == [lease.id], name
        assert limits.inspect("db").in_use == 2
        lease.release()
    for name in ("db", "other"):
        wait_for_idle(limits, name)


def test_a_killed_holders_slots_are_free_without_any_waiter(
    mp_limits: Limits, cross_process_url: str, timing: CrashTiming
) -> None:
    limits = mp_limits
    limits.create("db", slots=2, lease_ttl=timing.ttl)
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

        lease = wait_until(try_once, timing.bound + 1.0, "the killed holder's slots")
        took = time.monotonic() - killed_at
        assert took < timing.bound + 0.1, f"slots came back after {took:.3f}s"
        status = limits.inspect("db")
        assert [h.pid for h in status.holders] == [os.getpid()]
        lease.release()  # type: ignore[attr-defined]
    wait_for_idle(limits, "db")


def test_a_killed_waiter_at_the_head_leaves_the_queue(
    mp_limits: Limits, cross_process_url: str, timing: CrashTiming
) -> None:
    limits = mp_limits
    limits.create("db", slots=2, lease_ttl=timing.ttl)
    held = limits.acquire("db", occupy=2)
    results = SPAWN.Queue()
    with child(
        _workers.acquire_and_report, cross_process_url, ["db"], 2, WAIT, "doomed", results
    ) as proc:
        status = wait_for_waiters(limits, "db", 1, timeout=30)
        assert [(w.holder, w.pid, w.position) for w in status.waiters] == [("doomed", proc.pid, 1)]
        behind = Attempt(limits, "db", occupy=1, holder="behind", timeout=WAIT).start()
        status = wait_for_waiters(limits, "db", 2)
        assert [w.holder for w in status.waiters] == ["doomed", "behind"]

        killed_at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        held.release()
        lease = behind.result(timeout=WAIT)
        assert behind.granted_at is not None
        took = behind.granted_at - killed_at
        assert took < timing.bound, f"the next waiter got in {took:.3f}s after the head died"
        proc.join(5)
        status = limits.inspect("db")
        assert status.waiters == []
        assert [h.holder for h in status.holders] == ["behind"]
        lease.release()
    wait_for_idle(limits, "db")


def test_a_killed_waiter_disappears_from_inspect(
    mp_limits: Limits, cross_process_url: str, timing: CrashTiming
) -> None:
    limits = mp_limits
    limits.create("db", slots=1, lease_ttl=timing.ttl)
    held = limits.acquire("db")
    results = SPAWN.Queue()
    with child(
        _workers.acquire_and_report, cross_process_url, ["db"], 1, WAIT, "doomed", results
    ) as proc:
        wait_for_waiters(limits, "db", 1, timeout=30)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(5)
        wait_until(lambda: not limits.inspect("db").waiters, timing.bound, "the dead waiter to go")
    held.release()
    limits.acquire("db", timeout=0).release()
    wait_for_idle(limits, "db")
