"""The audit record of admin actions (``Store.admin_history``), on every store.

Each admin action (update, enable, disable, reset, delete) leaves a record of who did
it (the OS user, host, pid and program, or whoever :func:`acting_as` names), what it
changed and when (the store's clock); records outlive a deleted limit.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import time

import pytest

from sluice import Limits
from sluice.aio import Limits as AsyncLimits
from sluice.errors import InvalidRequest, LeaseLost, LimitBusy, LimitNotFound
from sluice.store import acquire_store, release_store
from sluice.store.audit import ADMIN_KEEP, Actor, AdminRecord, acting_as

pytestmark = pytest.mark.timeout(60)


def _history(url: str, name: str, count: int = 100) -> list[AdminRecord]:
    store = acquire_store(url)
    try:
        return store.admin_history(name, count)
    finally:
        release_store(store)


def _me() -> tuple[str, str, int]:
    return getpass.getuser(), socket.gethostname(), os.getpid()


def test_every_admin_action_leaves_a_record_of_who_what_and_when(limits: Limits) -> None:
    limits.create("db", slots=2, rate=10)
    started = time.time()
    limits.update("db", slots=5)
    limits.disable("db")
    limits.enable("db")
    lease = limits.acquire("db", occupy=2)
    assert limits.reset("db") == 1
    limits.delete("db")
    ended = time.time()

    records = _history(limits.url, "db")
    assert [r.action for r in records] == ["delete", "reset", "enable", "disable", "update"]
    assert [r.changes for r in reversed(records)] == [
        {"slots": {"from": 2, "to": 5}},
        {"active": {"from": True, "to": False}},
        {"active": {"from": False, "to": True}},
        {"revoked": 1},
        {
            "force": False,
            "limit": {
                "name": "db",
                "slots": 5,
                "rate": 10.0,
                "burst": 10,
                "lease_ttl": 30.0,
                "active": True,
            },
        },
    ]
    user, host, pid = _me()
    for record in records:
        assert record.limit == "db"
        assert (record.who.user, record.who.host, record.who.pid) == (user, host, pid)
        assert record.who.address is None and record.who.program
        assert started - 1 <= record.at <= ended + 1  # the store's clock, near this host's
    assert [r.at for r in records] == sorted((r.at for r in records), reverse=True)
    with pytest.raises(LeaseLost):
        lease.release()  # lost to the reset: says so, records nothing
    assert len(_history(limits.url, "db")) == 5


def test_the_actor_set_with_acting_as_is_recorded_also_through_the_async_api(
    store_url: str,
) -> None:
    dashboard = Actor("token holder 0123abcd", "web-1", 42, "sluice ui", "10.0.0.7:5123")

    async def main() -> None:
        async with AsyncLimits(store_url) as limits:
            await limits.create("api", rate=5)
            with acting_as(dashboard):
                await limits.update("api", rate=20, burst=4)
            await limits.disable("api")

    asyncio.run(main())
    disabled, updated = _history(store_url, "api")
    assert updated.who == dashboard
    assert updated.changes == {
        "rate": {"from": 5.0, "to": 20.0},
        "burst": {"from": 5, "to": 4},
    }
    assert disabled.who.user == getpass.getuser() and disabled.who.address is None


def test_a_refused_action_records_nothing_and_history_is_per_limit(limits: Limits) -> None:
    limits.create("db", slots=1)
    limits.create("other", slots=1)
    with limits.concurrency("db"), pytest.raises(LimitBusy):
        limits.delete("db")
    with pytest.raises(LimitNotFound):
        limits.update("missing", slots=3)
    with pytest.raises(InvalidRequest):
        limits.update("db", slots=0)
    assert _history(limits.url, "db") == []
    assert _history(limits.url, "missing") == []
    limits.update("other", slots=2)
    assert [r.action for r in _history(limits.url, "other")] == ["update"]
    assert _history(limits.url, "db") == []


def test_records_outlive_the_limit_and_its_next_life(limits: Limits) -> None:
    limits.create("db", slots=1)
    with pytest.raises(LeaseLost), limits.concurrency("db"):
        limits.delete("db", force=True)
    limits.create("db", slots=3)
    limits.update("db", lease_ttl=10)
    records = _history(limits.url, "db")
    assert [r.action for r in records] == ["update", "delete"]
    assert records[0].changes == {"lease_ttl": {"from": 30.0, "to": 10.0}}
    assert records[1].changes["force"] is True
    assert records[1].changes["limit"]["slots"] == 1


def test_record_admin_and_the_newest_count(limits: Limits) -> None:
    limits.create("db", slots=1)
    store = acquire_store(limits.url)
    try:
        made = store.record_admin("db", "update", {"note": {"from": None, "to": "by hand"}})
        assert made.action == "update" and made.who.user == getpass.getuser()
        for slots in range(2, 6):
            limits.update("db", slots=slots)
        newest = store.admin_history("db", 2)
        assert [r.changes["slots"]["to"] for r in newest] == [5, 4]
        oldest = store.admin_history("db", 5)[-1]
        assert oldest.changes == {"note": {"from": None, "to": "by hand"}}
        assert oldest.at == pytest.approx(made.at, abs=1e-3)
        for bad in (0, ADMIN_KEEP + 1, True):
            with pytest.raises(InvalidRequest, match="count must be an int"):
                store.admin_history("db", bad)
        with pytest.raises(InvalidRequest):
            store.admin_history("bad name!", 1)
    finally:
        release_store(store)
