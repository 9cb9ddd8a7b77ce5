"""Units handed to a waiter that is frozen (SIGSTOP) past the lease TTL come back."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sluice import Lease, Limits

from . import _workers
from ._helpers import Attempt, wait_for_waiters
from ._procs import SPAWN, child, expect, stop_between_store_steps

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]


@contextlib.contextmanager
def frozen_waiter_behind_a_holder(
    limits: Limits, url: str, hold_seconds: float = 0.0
) -> Iterator[tuple[Any, Lease, Any]]:
    """A child queued for "db" (lease_ttl 1 s) behind ``held``, then frozen by SIGSTOP.

    Yields (child process, the lease the parent holds, the child's report queue).
    """
    limits.create("db", slots=1, lease_ttl=1)
    limits.create("probe", slots=1)
    held = limits.acquire("db")
    results = SPAWN.Queue()
    args = (url, ["db"], 1, 30.0, "frozen", results, hold_seconds)
    with child(_workers.acquire_and_report, *args) as proc:
        wait_for_waiters(limits, "db", 1)
        stop_between_store_steps(proc, limits, "probe")
        yield proc, held, results


def test_a_grant_handed_to_a_frozen_waiter_lapses_and_goes_to_the_next(
    mp_limits: Limits, cross_process_url: str
) -> None:
    limits = mp_limits
    with frozen_waiter_behind_a_holder(limits, cross_process_url) as (proc, held, results):
        behind = Attempt(limits, "db", timeout=20, holder="behind").start()
        wait_for_waiters(limits, "db", 2)
        released_at = time.monotonic()
        held.release()  # handed to the frozen child, which cannot collect or renew it
        lease = behind.result(timeout=10)
        assert behind.granted_at is not None
        assert behind.granted_at - released_at < 3.0, "the lapsed hand-off was not reclaimed"
        assert [h.lease_id for h in limits.inspect("db").holders] == [lease.id]
        os.kill(proc.pid, signal.SIGCONT)
        # Thawed, the child finds its hand-off gone and queues again; it is served
        # once the slot is free, and never told of a lease it did not hold.
        time.sleep(0.3)
        lease.release()
        kind, *rest = expect(results, "granted", timeout=10)
        assert kind == "granted", rest
        assert expect(results, "released", timeout=10)[0] == "released"


def test_a_waiter_thawed_after_its_hand_off_lapsed_gets_a_fresh_lease_not_a_dead_one(
    mp_limits: Limits, cross_process_url: str
) -> None:
    limits = mp_limits
    # the child will hold its lease 1.5 s once it has one: renewals fall due
    with frozen_waiter_behind_a_holder(limits, cross_process_url, 1.5) as (proc, held, results):
        held.release()  # handed to the frozen child
        time.sleep(1.5)  # past the lease TTL, with nobody else asking
        os.kill(proc.pid, signal.SIGCONT)
        assert expect(results, "granted", timeout=10)[0] == "granted"
        # the lease it got is live: it renews while held and releases cleanly
        assert expect(results, "released", timeout=10)[0] == "released"
    assert limits.inspect("db").in_use == 0
