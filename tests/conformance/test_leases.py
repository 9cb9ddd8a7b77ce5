"""Semantics 5 and 9: every grant is a lease; a lost lease is final and its holder learns it."""

from __future__ import annotations

import os
import signal
from datetime import datetime, timedelta, timezone

import pytest

from sluice import Limits
from sluice.errors import AcquireTimeout, LeaseLost

from . import _workers
from ._helpers import Attempt, wait_for_waiters, wait_until
from ._procs import SPAWN, child, expect, stop_between_store_steps

pytestmark = pytest.mark.timeout(60)


TTL = 2.0
"""The short lease TTL of these tests: renewed every TTL/3, so a lease is lost only if
its keeper falls behind by over a second, which even a loaded machine does not."""


def outlived(limits: Limits, name: str, lease_id: str, first_expiry: datetime) -> bool:
    """Whether ``lease_id`` still holds ``name`` and was renewed after its first expiry."""
    holders = [h for h in limits.inspect(name).holders if h.lease_id == lease_id]
    assert holders, f"lease {lease_id} no longer holds {name!r}"
    return holders[0].expires_at >= first_expiry + timedelta(seconds=TTL)


def test_the_keeper_renews_a_short_lease_while_the_process_lives(limits: Limits) -> None:
    limits.create("db", slots=1, lease_ttl=TTL)
    lease = limits.acquire("db")
    first_expiry = lease.expires_at
    # held past the expiry it was granted with: only renewals can have kept it
    wait_until(
        lambda: outlived(limits, "db", lease.id, first_expiry), 3 * TTL, "a renewal after expiry"
    )
    assert datetime.now(timezone.utc) > first_expiry
    assert lease.lost is False
    status = limits.inspect("db")
    assert [h.lease_id for h in status.holders] == [lease.id]
    assert status.holders[0].expires_at > datetime.now(timezone.utc)
    with pytest.raises(AcquireTimeout):
        limits.acquire("db", timeout=0)
    lease.release()  # must not raise: the lease was never lost
    assert limits.inspect("db").in_use == 0


def test_a_reset_lease_learns_it_is_lost_by_its_next_renewal(limits: Limits) -> None:
    limits.create("db", slots=1, lease_ttl=1)
    lease = limits.acquire("db")
    assert limits.reset("db") == 1
    # no call on the lease: the keeper's renewal (due within one TTL) finds it gone
    wait_until(lambda: lease.lost, 3.0, "lease.lost after reset")
    with pytest.raises(LeaseLost) as info:
        lease.release()
    assert info.value.lease_id == lease.id
    assert info.value.names == ("db",)
    lease.release()  # reported once; idempotent after that


def test_leaving_the_with_block_of_a_lost_lease_raises(limits: Limits) -> None:
    limits.create("db", slots=2)
    with pytest.raises(LeaseLost) as info, limits.concurrency("db", holder="victim") as lease:
        assert limits.reset("db") == 1
        assert limits.inspect("db").in_use == 0
    assert info.value.lease_id == lease.id
    assert info.value.names == ("db",)
    assert lease.lost is True
    assert limits.inspect("db").in_use == 0


def test_a_lost_lease_cannot_come_back(limits: Limits) -> None:
    limits.create("db", slots=1, lease_ttl=1)
    lease = limits.acquire("db")
    limits.reset("db")
    wait_until(lambda: lease.lost, 3.0, "the keeper's renewal to find the lease gone")
    status = limits.inspect("db")
    assert (status.in_use, status.holders) == (0, [])
    newcomer = limits.acquire("db", timeout=0)
    with pytest.raises(LeaseLost):
        lease.release()
    # releasing the lost lease must not free the newcomer's unit
    assert [h.lease_id for h in limits.inspect("db").holders] == [newcomer.id]
    newcomer.release()


def test_force_delete_revokes_leases(limits: Limits) -> None:
    limits.create("db", slots=3)
    limits.create("other", slots=1)
    lease = limits.acquire(["db", "other"])
    limits.delete("db", force=True)
    assert limits.inspect("other").in_use == 0  # the whole lease went, not just 'db'
    limits.acquire("other", timeout=0).release()
    with pytest.raises(LeaseLost) as info:
        lease.release()
    assert info.value.lease_id == lease.id
    assert lease.lost


def test_a_lease_lost_on_one_limit_is_lost_on_all(limits: Limits) -> None:
    limits.create("a", slots=1)
    limits.create("b", slots=1)
    lease = limits.acquire(["a", "b"])
    limits.reset("a")
    assert limits.inspect("b").in_use == 0
    with pytest.raises(LeaseLost) as info:
        lease.release()
    assert sorted(info.value.names) == ["a", "b"]


def test_a_waiter_gets_the_units_of_a_revoked_lease(limits: Limits) -> None:
    limits.create("db", slots=1)
    held = limits.acquire("db")
    waiter = Attempt(limits, "db").start()
    wait_for_waiters(limits, "db", 1)
    assert limits.reset("db") == 1
    lease = waiter.result()
    assert [h.lease_id for h in limits.inspect("db").holders] == [lease.id]
    with pytest.raises(LeaseLost):
        held.release()
    assert limits.inspect("db").in_use == 1
    lease.release()


@pytest.mark.slow
def test_a_hung_holders_lease_expires_and_it_is_told(
    mp_limits: Limits, cross_process_url: str
) -> None:
    """A live but frozen (SIGSTOP) holder cannot renew: its lease expires after the TTL,
    the store reclaims it inside its own steps, a waiter gets the slot, and the holder,
    once thawed, learns the lease was lost when it leaves its with block."""
    limits, url = mp_limits, cross_process_url
    limits.create("db", slots=1, lease_ttl=TTL)
    limits.create("probe", slots=1)
    results = SPAWN.Queue()
    go = SPAWN.Event()
    with child(_workers.hold_until_told, url, ["db"], 1, results, go) as proc:
        _, _, child_lease = expect(results, "held")
        waiter = Attempt(limits, "db", timeout=20, holder="parent").start()
        wait_for_waiters(limits, "db", 1)
        # the child is alive: its keeper renews its lease past the expiry it got
        [holder] = limits.inspect("db").holders
        wait_until(
            lambda: outlived(limits, "db", child_lease, holder.expires_at),
            3 * TTL,
            "the child's renewal after its first expiry",
        )
        assert not waiter.granted.is_set(), "a live holder's lease was reclaimed"
        assert [h.lease_id for h in limits.inspect("db").holders] == [child_lease]

        stopped_at = stop_between_store_steps(proc, limits, "probe")
        lease = waiter.result(timeout=10)
        assert waiter.granted_at is not None
        took = waiter.granted_at - stopped_at
        assert took < TTL + 1.0, f"expiry took {took:.3f}s, longer than TTL + 1 s"
        assert [h.lease_id for h in limits.inspect("db").holders] == [lease.id]

        os.kill(proc.pid, signal.SIGCONT)
        go.set()
        outcome = results.get(timeout=20)
        assert outcome == ("lease-lost", True, child_lease, ["db"], "ok"), outcome
        # the thawed holder's release must not have freed the parent's unit
        status = limits.inspect("db")
        assert status.in_use == 1
        assert [h.lease_id for h in status.holders] == [lease.id]
        lease.release()
        proc.join(20)
        assert proc.exitcode == 0
