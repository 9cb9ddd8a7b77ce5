"""Semantics 4: waiters are pushed awake by release, update, disable, reset and delete.

Each change is made right after the waiter shows up in ``inspect``; the waiter
must be through within WAKE_BOUND (0.5 s), less than the 1 s minimum safety
re-check, so re-polling cannot pass. Idle waiters must not burn CPU.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable

import pytest

from sluice import Limits
from sluice.errors import LeaseLost, LimitNotFound

from . import _workers
from ._helpers import WAKE_BOUND, Attempt, stays, wait_for_idle, wait_for_waiters
from ._procs import CHILD_START, SPAWN, child

pytestmark = pytest.mark.timeout(60)


def latency(attempt: Attempt, since: float) -> float:
    attempt.join()
    assert attempt.finished_at is not None
    end = attempt.granted_at if attempt.granted_at is not None else attempt.finished_at
    return end - since


def test_release_wakes_a_waiter(limits: Limits) -> None:
    limits.create("db", slots=1)
    held = limits.acquire("db")
    waiter = Attempt(limits, "db").start()
    wait_for_waiters(limits, "db", 1)
    changed_at = time.monotonic()
    held.release()
    assert latency(waiter, changed_at) < WAKE_BOUND
    waiter.result().release()


def test_raising_slots_wakes_waiters(limits: Limits) -> None:
    limits.create("db", slots=1)
    held = limits.acquire("db")
    waiters = [Attempt(limits, "db", holder=f"w{i}").start() for i in range(2)]
    wait_for_waiters(limits, "db", 2)
    changed_at = time.monotonic()
    limits.update("db", slots=3)
    for waiter in waiters:
        assert latency(waiter, changed_at) < WAKE_BOUND
    assert limits.inspect("db").in_use == 3
    for lease in [held, *(w.result() for w in waiters)]:
        lease.release()
    wait_for_idle(limits, "db")


def test_disabling_admits_the_waiters(limits: Limits) -> None:
    limits.create("db", slots=1)
    held = limits.acquire("db")
    waiter = Attempt(limits, "db", occupy=1).start()
    wait_for_waiters(limits, "db", 1)
    changed_at = time.monotonic()
    limits.disable("db")
    assert latency(waiter, changed_at) < WAKE_BOUND
    lease = waiter.result()
    limits.enable("db")
    assert limits.inspect("db").in_use == 1  # only the lease taken while active
    lease.release()
    assert limits.inspect("db").in_use == 1
    held.release()
    wait_for_idle(limits, "db")


def test_reset_wakes_the_waiters(limits: Limits) -> None:
    limits.create("db", slots=2)
    held = limits.acquire("db", occupy=2)
    waiter = Attempt(limits, "db", occupy=2).start()
    wait_for_waiters(limits, "db", 1)
    changed_at = time.monotonic()
    assert limits.reset("db") == 1
    assert latency(waiter, changed_at) < WAKE_BOUND
    waiter.result().release()
    with pytest.raises(LeaseLost):
        held.release()
    wait_for_idle(limits, "db")


def test_delete_wakes_the_waiters_with_limit_not_found(limits: Limits) -> None:
    limits.create("db", slots=1)
    held = limits.acquire("db")
    waiter = Attempt(limits, "db").start()
    wait_for_waiters(limits, "db", 1)
    changed_at = time.monotonic()
    limits.delete("db", force=True)
    assert latency(waiter, changed_at) < WAKE_BOUND
    assert isinstance(waiter.error, LimitNotFound)
    assert waiter.error.names == ("db",)
    with pytest.raises(LeaseLost):
        held.release()
    assert limits.list() == []


def test_a_new_rate_wakes_a_rate_waiter(limits: Limits) -> None:
    limits.create("api", rate=0.2, burst=1)
    limits.rate_limit("api", timeout=0)  # the next token is 5 s away
    waiter = Attempt(limits, "api", timeout=10, rate=True).start()
    wait_for_waiters(limits, "api", 1)
    changed_at = time.monotonic()
    limits.update("api", rate=0.25)  # a changed rate restarts with a full bucket
    assert latency(waiter, changed_at) < WAKE_BOUND
    waiter.passed()


def test_a_multi_limit_waiter_wakes_when_its_last_blocker_frees(limits: Limits) -> None:
    limits.create("a", slots=1)
    limits.create("b", slots=1)
    held_a = limits.acquire("a")
    held_b = limits.acquire("b")
    waiter = Attempt(limits, ["a", "b"]).start()
    wait_for_waiters(limits, "b", 1)
    held_a.release()
    stays(lambda: not waiter.granted.is_set(), 0.1, "the waiter for a and b waiting")
    changed_at = time.monotonic()
    held_b.release()
    assert latency(waiter, changed_at) < WAKE_BOUND
    waiter.result().release()


def thread_cpu(threads: Iterable[threading.Thread]) -> dict[int, float]:
    """CPU seconds used so far by each live thread, by ident (its own clock, not the process's)."""
    used = {}
    for thread in threads:
        if thread.ident is None or not thread.is_alive():
            continue
        with contextlib.suppress(OSError):  # it ended meanwhile
            used[thread.ident] = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return used


@pytest.mark.timeout(30)
def test_idle_waiters_use_no_cpu(store_url: str) -> None:
    """Measured on the threads this test starts (its waiters, and the client's own
    threads: its line, its lease keeper, its store's listener), not on the whole
    pytest process, where threads left over by other tests would count."""
    before_test = {thread.ident for thread in threading.enumerate()}
    with Limits(store_url) as limits:
        limits.create("db", slots=1)
        held = limits.acquire("db")
        waiters = [Attempt(limits, "db", timeout=20, keep=False).start() for _ in range(30)]
        wait_for_waiters(limits, "db", 30, timeout=15)
        ours = [t for t in threading.enumerate() if t.ident not in before_test]
        assert len(ours) >= 30
        cpu_before = thread_cpu(ours)
        window = time.monotonic()
        stays(lambda: not any(w.done.is_set() for w in waiters), 2.0, "30 waiters waiting")
        cpu_after = thread_cpu(ours)
        window = time.monotonic() - window
        cpu = sum(cpu_after[i] - cpu_before[i] for i in cpu_after if i in cpu_before)
        held.release()
        for waiter in waiters:
            waiter.result()
        assert cpu < 0.1, f"30 idle waiters used {cpu:.3f} CPU seconds in {window:.1f} s"
        wait_for_idle(limits, "db")


@pytest.mark.slow
def test_a_release_wakes_a_waiter_in_another_process(
    mp_limits: Limits, cross_process_url: str
) -> None:
    limits = mp_limits
    limits.create("db", slots=1)
    results = SPAWN.Queue()
    for round_ in range(3):
        held = limits.acquire("db")
        with child(
            _workers.acquire_and_report, cross_process_url, ["db"], 1, 60, "other", results
        ) as proc:
            wait_for_waiters(limits, "db", 1, timeout=CHILD_START)
            released_at = time.monotonic()
            held.release()
            message = results.get(timeout=10)
            assert message[0] == "granted", message
            took = message[3] - released_at
            assert took < WAKE_BOUND, f"round {round_}: cross-process handoff took {took:.3f}s"
            assert results.get(timeout=10)[0] == "released"
            proc.join(10)
    wait_for_idle(limits, "db")
