"""Acquiring: leases, atomic multi-limit grants, never over, loud about mistakes.

Semantics 1 (atomic, all-or-nothing, de-duplicated, order-insensitive, no
deadlock), 2 (never over, checked from recorded intervals) and 8 (missing
limits, bad input naming the value; a failed call changes nothing).
"""

from __future__ import annotations

import math
import random
import threading
import time
from datetime import timedelta

import pytest

from sluice import Lease, Limits
from sluice.errors import (
    AcquireTimeout,
    InvalidRequest,
    LimitNotFound,
    MissingLimitWarning,
    SluiceError,
)

from ._helpers import (
    Attempt,
    Holdings,
    run_python,
    simulate_work,
    snapshot,
    stays,
    wait_for_idle,
    wait_for_waiters,
)

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------------- leases


def test_a_lease_describes_its_grant(limits: Limits) -> None:
    limits.create("db", slots=5, lease_ttl=15)
    lease = limits.acquire("db", occupy=2, holder="report-job")
    assert isinstance(lease, Lease)
    assert isinstance(lease.id, str) and lease.id
    assert lease.names == ("db",)
    assert lease.occupy == 2
    assert lease.holder == "report-job"
    assert lease.lost is False
    assert isinstance(lease.waited, float)
    assert 0.0 <= lease.waited < 1.0
    assert lease.acquired_at.utcoffset() == timedelta(0)
    assert lease.expires_at > lease.acquired_at
    assert limits.inspect("db").in_use == 2
    lease.release()
    assert limits.inspect("db").in_use == 0
    assert lease.lost is False


def test_lease_ids_are_unique(limits: Limits) -> None:
    limits.create("db", slots=10)
    leases = [limits.acquire("db") for _ in range(10)]
    assert len({lease.id for lease in leases}) == 10
    for lease in leases:
        lease.release()


def test_default_holder_label_is_a_string_shown_by_inspect(limits: Limits) -> None:
    limits.create("db", slots=1)
    lease = limits.acquire("db")
    assert isinstance(lease.holder, str)
    assert [h.holder for h in limits.inspect("db").holders] == [lease.holder]
    lease.release()


def test_occupy_counts_units(limits: Limits) -> None:
    limits.create("db", slots=5)
    two = limits.acquire("db", occupy=2)
    three = limits.acquire("db", occupy=3, timeout=0)
    assert limits.inspect("db").in_use == 5
    with pytest.raises(AcquireTimeout):
        limits.acquire("db", timeout=0)
    two.release()
    assert limits.inspect("db").in_use == 3
    again = limits.acquire("db", occupy=2, timeout=0)
    for lease in (three, again):
        lease.release()
    assert limits.inspect("db").in_use == 0


def test_release_is_idempotent(limits: Limits) -> None:
    limits.create("db", slots=2)
    first = limits.acquire("db")
    second = limits.acquire("db")
    first.release()
    first.release()
    first.release()
    status = limits.inspect("db")
    assert status.in_use == 1
    assert [h.lease_id for h in status.holders] == [second.id]
    second.release()
    assert limits.inspect("db").in_use == 0


def test_concurrency_context_manager_releases_on_exit_and_on_error(limits: Limits) -> None:
    limits.create("db", slots=3)
    with limits.concurrency("db", occupy=2, holder="ctx") as lease:
        assert isinstance(lease, Lease)
        assert lease.occupy == 2
        assert limits.inspect("db").in_use == 2
    assert limits.inspect("db").in_use == 0

    class Boom(Exception):
        pass

    with pytest.raises(Boom), limits.concurrency("db", occupy=3):
        assert limits.inspect("db").in_use == 3
        raise Boom
    assert limits.inspect("db").in_use == 0


def test_a_lease_is_a_context_manager(limits: Limits) -> None:
    limits.create("db", slots=1)
    lease = limits.acquire("db")
    with lease:
        assert limits.inspect("db").in_use == 1
    assert limits.inspect("db").in_use == 0


# --------------------------------------------------------------------------- semantics 1


def test_names_are_deduplicated(limits: Limits) -> None:
    limits.create("db", slots=2)
    lease = limits.acquire(["db", "db", "db"], occupy=2, timeout=0)
    assert lease.names == ("db",)
    assert limits.inspect("db").in_use == 2
    lease.release()
    assert limits.inspect("db").in_use == 0


def test_names_are_order_insensitive(limits: Limits) -> None:
    limits.create("a", slots=1)
    limits.create("b", slots=1)
    first = limits.acquire(["b", "a"])
    assert sorted(first.names) == ["a", "b"]
    assert len(first.names) == 2
    with pytest.raises(AcquireTimeout):
        limits.acquire(["a", "b"], timeout=0)
    first.release()
    second = limits.acquire(["a", "b", "a"], timeout=0)
    assert sorted(second.names) == ["a", "b"]
    second.release()


def test_multi_limit_acquire_is_all_or_nothing(limits: Limits) -> None:
    limits.create("a", slots=3)
    limits.create("b", slots=1)
    blocker = limits.acquire("b")
    before = snapshot(limits, "a", "b")
    with pytest.raises(AcquireTimeout):
        limits.acquire(["a", "b"], occupy=1, timeout=0)
    assert snapshot(limits, "a", "b") == before
    with pytest.raises(AcquireTimeout):
        limits.acquire(["a", "b"], occupy=1, timeout=0.2)
    assert snapshot(limits, "a", "b") == before
    blocker.release()
    lease = limits.acquire(["a", "b"], timeout=0)
    assert (limits.inspect("a").in_use, limits.inspect("b").in_use) == (1, 1)
    lease.release()
    assert (limits.inspect("a").in_use, limits.inspect("b").in_use) == (0, 0)


def test_a_multi_limit_waiter_holds_nothing_until_it_gets_everything(limits: Limits) -> None:
    limits.create("a", slots=2)
    limits.create("b", slots=1)
    blocker = limits.acquire("b")
    waiter = Attempt(limits, ["a", "b"], occupy=1, holder="both").start()
    wait_for_waiters(limits, "b", 1)
    stays(
        lambda: limits.inspect("a").in_use == 0 and not waiter.granted.is_set(),
        0.1,
        "nothing held on 'a' while 'b' blocks",
    )
    blocker.release()
    lease = waiter.result()
    assert sorted(lease.names) == ["a", "b"]
    assert (limits.inspect("a").in_use, limits.inspect("b").in_use) == (1, 1)
    lease.release()
    assert (limits.inspect("a").in_use, limits.inspect("b").in_use) == (0, 0)


def test_opposite_orders_never_deadlock(limits: Limits) -> None:
    limits.create("a", slots=1)
    limits.create("b", slots=1)
    rounds = 25
    holdings = Holdings(slots={"a": 1, "b": 1})
    start = threading.Barrier(4)
    done: list[int] = []
    errors: list[BaseException] = []

    def worker(order: list[str]) -> None:
        try:
            start.wait()
            for _ in range(rounds):
                with limits.concurrency(order, timeout=20), holdings.holding(order):
                    pass
                done.append(1)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(order,), daemon=True)
        for order in (["a", "b"], ["b", "a"], ["a", "b"], ["b", "a"])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    assert not errors, errors
    assert len(done) == 4 * rounds
    holdings.check()
    for name in ("a", "b"):
        wait_for_idle(limits, name)


# --------------------------------------------------------------------------- semantics 2


def test_never_over_under_thread_contention(limits: Limits) -> None:
    slots = {"a": 2, "b": 3, "c": 4}
    for name, count in slots.items():
        limits.create(name, slots=count)
    holdings = Holdings(slots=slots)
    threads_n, rounds = 8, 25
    start = threading.Barrier(threads_n)
    errors: list[BaseException] = []
    completed: list[int] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            for i in range(rounds):
                names = rng.sample(sorted(slots), rng.randint(1, 3))
                occupy = rng.randint(1, min(slots[n] for n in names))
                if i % 2:
                    with (
                        limits.concurrency(names, occupy, timeout=30) as lease,
                        holdings.holding(names, occupy),
                    ):
                        simulate_work(rng.uniform(0, 0.002))
                else:
                    lease = limits.acquire(names, occupy, timeout=30)
                    with holdings.holding(lease.names, occupy):
                        simulate_work(rng.uniform(0, 0.002))
                    lease.release()
                assert sorted(lease.names) == sorted(names)
                completed.append(1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
    assert not errors, errors
    assert len(completed) == threads_n * rounds
    holdings.check()
    for name in slots:
        wait_for_idle(limits, name)


# --------------------------------------------------------------------------- semantics 8: missing


def test_missing_limits_raise_listing_every_missing_name(limits: Limits) -> None:
    limits.create("db", slots=1)
    before = snapshot(limits, "db")
    with pytest.raises(LimitNotFound) as info:
        limits.acquire(["ghost-2", "db", "ghost-1"], timeout=0)
    assert sorted(info.value.names) == ["ghost-1", "ghost-2"]
    assert "ghost-1" in str(info.value) and "ghost-2" in str(info.value)
    assert snapshot(limits, "db") == before
    # acquiring never creates a limit
    assert [lim.name for lim in limits.list()] == ["db"]
    with pytest.raises(LimitNotFound):
        limits.rate_limit("ghost-3", timeout=0)
    with pytest.raises(LimitNotFound), limits.concurrency(["db", "ghost-4"], timeout=0):
        pass
    assert snapshot(limits, "db") == before
    assert [lim.name for lim in limits.list()] == ["db"]


def test_missing_ignore_acquires_the_names_that_exist(limits: Limits) -> None:
    limits.create("db", slots=1)
    lease = limits.acquire(["db", "ghost"], missing="ignore")
    assert lease.names == ("db",)
    assert limits.inspect("db").in_use == 1
    lease.release()
    assert limits.inspect("db").in_use == 0
    assert [lim.name for lim in limits.list()] == ["db"]


def test_missing_warn_warns_and_acquires_the_names_that_exist(limits: Limits) -> None:
    limits.create("db", slots=1)
    with pytest.warns(MissingLimitWarning, match="ghost"):
        lease = limits.acquire(["db", "ghost"], missing="warn")
    assert lease.names == ("db",)
    assert limits.inspect("db").in_use == 1
    lease.release()
    with (
        pytest.warns(MissingLimitWarning, match="ghost"),
        limits.concurrency(["ghost", "db"], missing="warn") as lease,
    ):
        assert lease.names == ("db",)
    limits.create("api", rate=100.0)
    with pytest.warns(MissingLimitWarning, match="ghost"):
        limits.rate_limit(["api", "ghost"], missing="warn")
    assert [lim.name for lim in limits.list()] == ["api", "db"]


def test_missing_policy_is_validated(limits: Limits) -> None:
    limits.create("db", slots=1)
    with pytest.raises(InvalidRequest, match="bogus"):
        limits.acquire("db", missing="bogus")  # type: ignore[arg-type]
    assert limits.inspect("db").in_use == 0


MISSING_FROM_ENV = r"""
import json, os, warnings
from sluice import Limits
from sluice.errors import LimitNotFound
limits = Limits(os.environ["TEST_URL"])
limits.ensure("real", slots=1)
out = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        lease = limits.acquire(["real", "ghost"], timeout=0)
    except LimitNotFound as exc:
        out["error"] = list(exc.names)
    else:
        out["names"] = list(lease.names)
        lease.release()
out["warnings"] = [w.category.__name__ for w in caught]
limits.close()
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("raise", {"error": ["ghost"], "warnings": []}),
        ("warn", {"names": ["real"], "warnings": ["MissingLimitWarning"]}),
        ("ignore", {"names": ["real"], "warnings": []}),
    ],
)
def test_sluice_missing_limit_setting_is_the_default_policy(
    store_url: str, setting: str, expected: dict[str, object]
) -> None:
    got = run_python(MISSING_FROM_ENV, TEST_URL=store_url, SLUICE_MISSING_LIMIT=setting)
    assert got == expected


MODULE_LEVEL = r"""
import asyncio, json, os
import sluice, sluice.aio
admin = sluice.Limits(os.environ["SLUICE_URL"])
admin.create("mod", slots=2)
admin.create("modr", rate=0.5, burst=1)
out = {}
with sluice.concurrency("mod", occupy=2, holder="module-level") as lease:
    status = admin.inspect("mod")
    out["inside"] = [status.in_use, [h.holder for h in status.holders]]
out["after"] = admin.inspect("mod").in_use
sluice.rate_limit("modr", timeout=0)
out["token_wait"] = admin.inspect("modr").next_token_in

async def main():
    async with sluice.aio.concurrency("mod", occupy=1, holder="aio") as lease:
        out["aio_inside"] = admin.inspect("mod").in_use
    try:
        await sluice.aio.rate_limit("modr", timeout=0)
    except sluice.errors.AcquireTimeout:
        out["aio_rate"] = "timeout"

asyncio.run(main())
out["aio_after"] = admin.inspect("mod").in_use
admin.close()
print(json.dumps(out))
"""


def test_module_level_twins_use_the_default_store_from_sluice_url(store_url: str) -> None:
    got = run_python(MODULE_LEVEL, SLUICE_URL=store_url)
    assert got["inside"] == [2, ["module-level"]]
    assert got["after"] == 0
    assert 1.0 < got["token_wait"] <= 2.0
    assert got["aio_inside"] == 1
    assert got["aio_rate"] == "timeout"  # the sync call took the only token: one bucket
    assert got["aio_after"] == 0


# --------------------------------------------------------------------------- semantics 8: bad input


@pytest.mark.timeout(10)
def test_occupy_above_slots_fails_at_once_naming_limit_and_value(limits: Limits) -> None:
    limits.create("db-pool", slots=4)
    limits.create("other", slots=10)
    started = time.monotonic()
    with pytest.raises(InvalidRequest) as info:
        limits.acquire(["other", "db-pool"], occupy=5, timeout=None)
    assert time.monotonic() - started < 1.0
    assert "db-pool" in str(info.value)
    assert "5" in str(info.value)
    assert snapshot(limits, "db-pool", "other") == [
        (limits.get("db-pool"), 0, [], []),
        (limits.get("other"), 0, [], []),
    ]


@pytest.mark.timeout(10)
def test_occupy_above_burst_fails_at_once(limits: Limits) -> None:
    limits.create("api", slots=10, rate=5.0, burst=3)
    with pytest.raises(InvalidRequest, match="api"):
        limits.acquire("api", occupy=4, timeout=None)
    with pytest.raises(InvalidRequest, match="api"):
        limits.rate_limit("api", occupy=4, timeout=None)
    assert limits.inspect("api").next_token_in == 0.0
    assert limits.inspect("api").in_use == 0


@pytest.mark.parametrize(
    ("occupy", "shown"),
    [(0, "0"), (-1, "-1"), (True, "True"), (1.5, "1.5"), ("2", "'2'"), (None, "None")],
)
def test_bad_occupy_is_rejected_naming_the_value(
    limits: Limits, occupy: object, shown: str
) -> None:
    limits.create("db", slots=5)
    with pytest.raises(InvalidRequest) as info:
        limits.acquire("db", occupy=occupy)  # type: ignore[arg-type]
    assert "occupy" in str(info.value) and shown in str(info.value)
    with pytest.raises(InvalidRequest):
        limits.rate_limit("db", occupy=occupy)  # type: ignore[arg-type]
    assert limits.inspect("db").in_use == 0


@pytest.mark.parametrize(
    ("timeout", "shown"), [(-1, "-1"), (math.nan, "nan"), ("5", "'5'"), (True, "True")]
)
def test_bad_timeout_is_rejected_naming_the_value(
    limits: Limits, timeout: object, shown: str
) -> None:
    limits.create("db", slots=1)
    with pytest.raises(InvalidRequest) as info:
        limits.acquire("db", timeout=timeout)  # type: ignore[arg-type]
    assert "timeout" in str(info.value) and shown in str(info.value)
    assert limits.inspect("db").in_use == 0


@pytest.mark.parametrize("names", [[], "bad name", ["db", "b@d"], None, 7, [7], b"db"])
def test_bad_names_in_acquire_are_rejected(limits: Limits, names: object) -> None:
    limits.create("db", slots=1)
    with pytest.raises(InvalidRequest):
        limits.acquire(names, timeout=0)  # type: ignore[arg-type]
    assert snapshot(limits, "db") == [(limits.get("db"), 0, [], [])]


def test_errors_share_one_root(limits: Limits) -> None:
    limits.create("db", slots=1)
    held = limits.acquire("db")
    for call in (
        lambda: limits.acquire("db", timeout=0),
        lambda: limits.acquire("ghost", timeout=0),
        lambda: limits.acquire("db", occupy=2),
        lambda: limits.create("db", slots=1),
    ):
        with pytest.raises(SluiceError):
            call()
    held.release()


def test_timeout_zero_on_a_busy_limit_leaves_no_trace(limits: Limits) -> None:
    limits.create("db", slots=1)
    held = limits.acquire("db")
    before = snapshot(limits, "db")
    for _ in range(5):
        with pytest.raises(AcquireTimeout):
            limits.acquire("db", timeout=0)
    assert snapshot(limits, "db") == before
    held.release()
    # nothing the failed attempts did delays the next grant
    limits.acquire("db", timeout=0).release()


def test_waiting_attempt_records_waited(limits: Limits) -> None:
    limits.create("db", slots=1)
    held = limits.acquire("db")
    waiter = Attempt(limits, "db").start()
    wait_for_waiters(limits, "db", 1)
    stays(lambda: not waiter.granted.is_set(), 0.3, "the waiter waiting")  # its wait
    held.release()
    lease = waiter.result()
    assert 0.25 <= lease.waited < 5.0
    lease.release()
