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
from sluice.store.base import CLAIM_WINDOW

from . import _workers
from ._helpers import Attempt, wait_for_waiters, wait_until
from ._procs import CHILD_START, SPAWN, child, expect, stop_between_store_steps

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]


@contextlib.contextmanager
def frozen_waiter_behind_a_holder(
    limits: Limits, url: str, hold_seconds: float = 0.0
) -> Iterator[tuple[Any, Lease, Any]]:
    """A child queued for "db" (lease_ttl 2 s) behind ``held``, then frozen by SIGSTOP.

    Yields (child process, the lease the parent holds, the child's report queue).
    The TTL is short, so the frozen child's ticket lapses soon, yet not so short that
    the parent's lease depends on its renewals keeping up to the tenth of a second.
    """
    limits.create("db", slots=1, lease_ttl=2)
    limits.create("probe", slots=1)
    held = limits.acquire("db")
    results = SPAWN.Queue()
    args = (url, ["db"], 1, 30.0, "frozen", results, hold_seconds)
    with child(_workers.acquire_and_report, *args) as proc:
        wait_for_waiters(limits, "db", 1, timeout=CHILD_START)
        stop_between_store_steps(proc, limits, "probe")
        yield proc, held, results


def child_queued(limits: Limits, pid: int) -> bool:
    """Whether a ticket of process ``pid`` waits on "db"."""
    return any(w.pid == pid for w in limits.inspect("db").waiters)


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
        # Frozen past its TTL, the child's ticket lapses too.
        wait_until(lambda: not child_queued(limits, proc.pid), 5, "the frozen ticket to lapse")
        os.kill(proc.pid, signal.SIGCONT)
        # Thawed, the child finds its hand-off gone and queues again; it is served
        # once the slot is free, and never told of a lease it did not hold.
        wait_until(lambda: child_queued(limits, proc.pid), 10, "the thawed child to queue again")
        assert [h.lease_id for h in limits.inspect("db").holders] == [lease.id]
        freed_at = time.monotonic()
        lease.release()
        _, holder, pid, granted_at, _ = expect(results, "granted", timeout=10)
        assert (holder, pid) == ("frozen", proc.pid)
        assert granted_at >= freed_at, "the child was granted while the slot was held"
        assert expect(results, "released", timeout=10)[1:3] == ("frozen", proc.pid)


def test_a_waiter_thawed_after_its_hand_off_lapsed_gets_a_fresh_lease_not_a_dead_one(
    mp_limits: Limits, cross_process_url: str
) -> None:
    limits = mp_limits
    # the child will hold its lease 1.5 s once it has one: renewals (every TTL/3) fall due
    with frozen_waiter_behind_a_holder(limits, cross_process_url, 1.5) as (proc, held, results):
        held.release()  # handed to the frozen child
        # With nobody else asking, the unclaimed hand-off lapses (CLAIM_WINDOW) and
        # its unit comes back; the child's ticket, unrenewed past its TTL, lapses too.
        wait_until(
            lambda: limits.inspect("db").in_use == 0 and not child_queued(limits, proc.pid),
            CLAIM_WINDOW + 5,
            "the hand-off and the frozen ticket to lapse",
        )
        os.kill(proc.pid, signal.SIGCONT)
        assert expect(results, "granted", timeout=10)[1:3] == ("frozen", proc.pid)
        # the lease it got is live: it renews while held and releases cleanly
        assert expect(results, "released", timeout=10)[1:3] == ("frozen", proc.pid)
    assert limits.inspect("db").in_use == 0
