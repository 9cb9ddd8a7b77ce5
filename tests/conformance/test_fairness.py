"""Semantics 3: strict FIFO per limit; a newcomer never overtakes a queued waiter.

Queues are built one waiter at a time (each seen in ``inspect`` before the
next starts), so arrival order is known exactly and the grant order must match.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from datetime import timedelta

import pytest

from sluice import Lease, Limits, LimitStatus
from sluice.errors import AcquireTimeout

from ._helpers import (
    CLOCK_SLACK,
    WAKE_BOUND,
    Attempt,
    Holdings,
    simulate_work,
    wait_for_idle,
    wait_for_waiters,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


def queue_up(limits: Limits, name: str, attempts: list[Attempt]) -> None:
    """Start ``attempts`` in order, each only once the previous one is queued on ``name``."""
    already = len(limits.inspect(name).waiters)
    for i, attempt in enumerate(attempts, start=1):
        attempt.start()
        wait_for_waiters(limits, name, already + i)


def test_waiters_are_served_in_arrival_order(limits: Limits) -> None:
    limits.create("db", slots=1)
    held = limits.acquire("db")
    order: list[str] = []
    attempts = [Attempt(limits, "db", holder=f"w{i}", keep=False, order=order) for i in range(8)]
    queue_up(limits, "db", attempts)
    waiters = limits.inspect("db").waiters
    assert [w.holder for w in waiters] == [f"w{i}" for i in range(8)]
    assert [w.position for w in waiters] == list(range(1, 9))
    assert all(w.occupy == 1 for w in waiters)
    assert all(w.pid == os.getpid() for w in waiters)
    assert all(w.host in {socket.gethostname(), socket.getfqdn()} for w in waiters)
    assert len({w.ticket_id for w in waiters}) == 8
    assert all(w.since.utcoffset() == timedelta(0) for w in waiters)
    assert [w.since for w in waiters] == sorted(w.since for w in waiters)
    held.release()
    for attempt in attempts:
        attempt.result()
    assert order == [f"w{i}" for i in range(8)]
    wait_for_idle(limits, "db")


def test_fifo_with_mixed_occupy(limits: Limits) -> None:
    """Release step by step; after each step exactly the right waiters hold units.

    One release may grant several waiters at once (all that fit, in order), so
    the test checks who holds at each stage rather than comparing timestamps.
    """
    limits.create("db", slots=3)
    held = limits.acquire("db", occupy=3)
    sizes = [2, 1, 3, 1, 1, 2]
    w = [Attempt(limits, "db", occupy=n, holder=f"w{i}") for i, n in enumerate(sizes)]
    queue_up(limits, "db", w)
    assert [x.occupy for x in limits.inspect("db").waiters] == sizes
    released: set[int] = set()

    def holding() -> set[int]:
        return {i for i, x in enumerate(w) if x.granted.is_set()} - released

    def stage(release: Lease, granted: set[int]) -> None:
        # The store grants inside the release's own step, every head that fits and no
        # other, so once the expected holders show, the step's grants are all there.
        expected = ({i for i in range(len(w)) if w[i].granted.is_set()} | granted) - released
        release.release()

        def holders_shown() -> LimitStatus | None:
            status = limits.inspect("db")
            return status if len(status.holders) >= len(expected) else None

        status = wait_until(holders_shown, 5, f"holders {sorted(expected)}")
        assert sorted(h.holder for h in status.holders) == sorted(f"w{i}" for i in expected)
        assert status.in_use == sum(sizes[i] for i in expected) <= 3
        assert [x.holder for x in status.waiters] == [
            f"w{i}" for i in range(len(w)) if i not in expected | released
        ]
        for i in granted:
            assert w[i].granted.wait(5), f"w{i} was not granted"
        assert holding() == expected

    stage(held, {0, 1})  # 2 + 1 fit; w2 (3) must wait
    assert holding() == {0, 1}
    released.add(0)
    stage(w[0].result(), set())  # 2 units free, but w2 needs 3 and w3 may not overtake it
    assert holding() == {1}
    released.add(1)
    stage(w[1].result(), {2})
    assert holding() == {2}
    released.add(2)
    stage(w[2].result(), {3, 4})  # 1 + 1 fit; w5 (2) would make 4
    assert holding() == {3, 4}
    released.add(3)
    stage(w[3].result(), {5})  # w4 holds 1, w5 takes 2
    assert holding() == {4, 5}
    for lease in (w[4].result(), w[5].result()):
        lease.release()
    wait_for_idle(limits, "db")


def test_a_newcomer_does_not_overtake_a_waiter_needing_more_units(limits: Limits) -> None:
    limits.create("db", slots=3)
    held = limits.acquire("db", occupy=2)
    big = Attempt(limits, "db", occupy=2, holder="big").start()
    wait_for_waiters(limits, "db", 1)
    # one unit is free, but the queued request for two came first
    with pytest.raises(AcquireTimeout):
        limits.acquire("db", occupy=1, timeout=0)
    with pytest.raises(AcquireTimeout) as info:
        limits.acquire("db", occupy=1, timeout=0.3, holder="newcomer")
    assert info.value.blocked_on == "db"
    assert info.value.position == 2
    assert limits.inspect("db").in_use == 2
    assert [w.holder for w in limits.inspect("db").waiters] == ["big"]
    held.release()
    lease = big.result()
    assert lease.occupy == 2
    small = limits.acquire("db", occupy=1, timeout=0)  # the unit left over
    assert limits.inspect("db").in_use == 3
    lease.release()
    small.release()
    wait_for_idle(limits, "db")


def test_a_newcomer_does_not_overtake_a_waiter_blocked_on_another_limit(limits: Limits) -> None:
    limits.create("a", slots=1)
    limits.create("b", slots=1)
    held_b = limits.acquire("b")
    both = Attempt(limits, ["a", "b"], holder="both").start()
    wait_for_waiters(limits, "b", 1)
    # 'a' is free, but the waiter for ['a', 'b'] arrived first and shares 'a'
    with pytest.raises(AcquireTimeout) as info:
        limits.acquire("a", timeout=0)
    assert info.value.blocked_on == "a"
    assert limits.inspect("a").in_use == 0
    assert [w.holder for w in limits.inspect("a").waiters] == ["both"]
    held_b.release()
    lease = both.result()
    assert sorted(lease.names) == ["a", "b"]
    lease.release()
    limits.acquire("a", timeout=0).release()
    for name in ("a", "b"):
        wait_for_idle(limits, name)


def test_a_newcomer_on_a_disjoint_limit_is_not_held_back(limits: Limits) -> None:
    limits.create("a", slots=1)
    limits.create("b", slots=1)
    held = limits.acquire("a")
    waiter = Attempt(limits, "a", holder="waits-on-a").start()
    wait_for_waiters(limits, "a", 1)
    limits.acquire("b", timeout=0).release()
    held.release()
    waiter.result().release()


def test_a_big_waiter_is_not_starved_by_a_stream_of_small_ones(limits: Limits) -> None:
    limits.create("db", slots=4)
    holdings = Holdings(slots={"db": 4})
    stop = threading.Event()
    streamed: list[int] = []
    errors: list[BaseException] = []

    def small_stream(seed: int) -> None:
        try:
            while not stop.is_set():
                with limits.concurrency("db", occupy=1, timeout=20), holdings.holding("db"):
                    simulate_work(0.002 * (1 + seed % 3))
                streamed.append(1)
        except BaseException as exc:
            errors.append(exc)

    streams = [threading.Thread(target=small_stream, args=(i,), daemon=True) for i in range(6)]
    for thread in streams:
        thread.start()
    wait_until(lambda: len(streamed) >= 20, 10, "the small stream to get going")
    started = time.monotonic()
    lease = limits.acquire("db", occupy=4, timeout=10, holder="big")
    waited = time.monotonic() - started
    with holdings.holding("db", 4):
        # while the big lease holds everything, nobody else gets in
        status = limits.inspect("db")
        assert status.in_use == 4
        assert [h.holder for h in status.holders] == ["big"]
    lease.release()
    streamed_after = len(streamed)
    wait_until(lambda: len(streamed) >= streamed_after + 20, 10, "the stream to go on")
    stop.set()
    for thread in streams:
        thread.join(25)
    assert not errors, errors
    assert waited < 2.0, f"occupy=4 waited {waited:.3f}s behind occupy=1 newcomers"
    holdings.check()
    wait_for_idle(limits, "db")


def test_a_newcomer_does_not_overtake_a_rate_waiter(limits: Limits) -> None:
    rate, burst = 2.0, 3
    limits.create("api", rate=rate, burst=burst)
    emptying = time.monotonic()
    limits.rate_limit("api", occupy=burst, timeout=0)  # empty the bucket
    emptied = time.monotonic()
    big = Attempt(limits, "api", occupy=burst, timeout=10, holder="big", rate=True).start()
    wait_for_waiters(limits, "api", 1)
    # A token is back 1/rate s after the bucket was emptied; the big waiter needs all
    # three, due burst/rate s after. Newcomers are refused all along; keep asking until
    # one was refused while a token certainly was in the bucket and big still waited.
    one_back = emptied + 1 / rate + CLOCK_SLACK
    all_back = emptying + burst / rate - CLOCK_SLACK
    refused_with_a_token: list[float] = []

    def newcomer_refused_with_a_token_back() -> bool:
        asked = time.monotonic()
        with pytest.raises(AcquireTimeout):
            limits.rate_limit("api", occupy=1, timeout=0, holder="newcomer")
        answered = time.monotonic()
        if asked >= one_back and answered <= all_back:
            refused_with_a_token.append(asked - emptied)
        return bool(refused_with_a_token) or asked >= all_back

    wait_until(newcomer_refused_with_a_token_back, 10, "a newcomer asking while a token is back")
    assert refused_with_a_token, "no newcomer asked between the first token and the third"
    big.passed()
    assert big.granted_at is not None and big.granted_at >= all_back


def test_queue_positions_are_per_limit(limits: Limits) -> None:
    limits.create("a", slots=1)
    limits.create("b", slots=1)
    held = limits.acquire(["a", "b"])
    on_a = Attempt(limits, "a", holder="only-a").start()
    wait_for_waiters(limits, "a", 1)
    on_ab = Attempt(limits, ["a", "b"], holder="a-and-b").start()
    wait_for_waiters(limits, "b", 1)
    on_b = Attempt(limits, "b", holder="only-b").start()
    wait_for_waiters(limits, "b", 2)
    a_waiters = limits.inspect("a").waiters
    b_waiters = limits.inspect("b").waiters
    assert [(w.holder, w.position) for w in a_waiters] == [("only-a", 1), ("a-and-b", 2)]
    assert [(w.holder, w.position) for w in b_waiters] == [("a-and-b", 1), ("only-b", 2)]
    held.release()
    # 'only-a' is first on 'a'; 'a-and-b' is first on 'b' but needs 'a' too; 'only-b' waits.
    first = on_a.result()
    assert not on_ab.granted.is_set()
    assert not on_b.granted.is_set()
    first.release()
    second = on_ab.result()
    assert not on_b.granted.is_set()
    second.release()
    on_b.result().release()
    for name in ("a", "b"):
        wait_for_idle(limits, name)


def test_handoff_to_the_next_in_line_is_prompt(limits: Limits) -> None:
    limits.create("db", slots=1)
    held = limits.acquire("db")
    order: list[str] = []
    attempts = [Attempt(limits, "db", holder=f"w{i}", order=order) for i in range(3)]
    queue_up(limits, "db", attempts)
    released_at = time.monotonic()
    held.release()
    for attempt in attempts:
        lease = attempt.result()
        assert attempt.granted_at is not None
        assert attempt.granted_at - released_at < WAKE_BOUND
        released_at = time.monotonic()
        lease.release()
    assert order == ["w0", "w1", "w2"]
