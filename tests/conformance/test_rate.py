"""Semantics 7: rate limits are exact (GCRA), computed waits, slots and rate together."""

from __future__ import annotations

import threading
import time

import pytest

from sluice import Limits
from sluice.errors import AcquireTimeout, InvalidRequest

from ._helpers import CLOCK_SLACK, LATE_BOUND, Grant, Holdings, rate_window_violations, snapshot

pytestmark = pytest.mark.timeout(60)

WAKE_SLACK = LATE_BOUND
"""How late past its due time a rate waiter may get its token (a computed sleep, no polling)."""


def test_window_checker_flags_an_over_admission() -> None:
    """The checker itself: 4 grants inside 0.1 s break burst=2, rate=10 (allows 3)."""
    grants = [(0.0, 0.001, 1), (0.01, 0.011, 1), (0.05, 0.051, 1), (0.09, 0.1, 1)]
    assert rate_window_violations(grants, rate=10.0, burst=2)
    assert not rate_window_violations(grants, rate=10.0, burst=3)
    spread = [(i * 0.1, i * 0.1 + 0.001, 1) for i in range(10)]
    assert not rate_window_violations(spread, rate=10.0, burst=1)


def test_a_full_bucket_gives_burst_at_once_then_refuses(limits: Limits) -> None:
    # One token a second: the calls below are done long before the next one is due,
    # even on a loaded machine (at 10/s, a 0.1 s stall let a token back in between).
    limits.create("api", rate=1.0, burst=3)
    first = time.monotonic()
    for _ in range(3):
        limits.rate_limit("api", timeout=0)
    with pytest.raises(AcquireTimeout) as info:
        limits.rate_limit("api", timeout=0)
    assert info.value.limits == ("api",)
    wait = limits.inspect("api").next_token_in
    elapsed = time.monotonic() - first
    assert wait is not None
    assert elapsed < 1.0, f"the calls took {elapsed:.3f}s: the check below needs them quicker"
    # the next token is due one period after the first grant, made after `first`
    assert 0.0 < wait <= 1.0 + CLOCK_SLACK
    assert wait >= 1.0 - elapsed - CLOCK_SLACK


def test_occupy_takes_that_many_tokens(limits: Limits) -> None:
    # 2 tokens/s: the next token is 0.5 s away, so a slow store step between the calls
    # cannot let one in; two more are due 1 s after the burst was taken.
    limits.create("api", rate=2.0, burst=5)
    before_burst = time.monotonic()
    limits.rate_limit("api", occupy=5, timeout=0)
    after_burst = time.monotonic()
    with pytest.raises(AcquireTimeout):
        limits.rate_limit("api", occupy=1, timeout=0)
    limits.rate_limit("api", occupy=2, timeout=5)
    granted = time.monotonic()
    assert granted - before_burst >= 1.0 - CLOCK_SLACK  # never early
    assert granted - after_burst <= 1.0 + WAKE_SLACK  # never much late


def test_a_rate_waiter_sleeps_exactly_until_its_token_is_due(limits: Limits) -> None:
    limits.create("api", rate=5.0, burst=1)
    first_before = time.monotonic()
    limits.rate_limit("api")
    previous_after = time.monotonic()
    for k in range(1, 4):
        limits.rate_limit("api", timeout=5)
        after = time.monotonic()
        # never early: the k-th token is due 0.2*k s after the first grant
        assert after - first_before >= 0.2 * k - CLOCK_SLACK
        # never much late: due 0.2 s after the previous grant, which was before previous_after
        assert after - previous_after <= 0.2 + WAKE_SLACK, f"token {k} came late"
        previous_after = after


def test_a_timeout_shorter_than_the_wait_fails_and_takes_nothing(limits: Limits) -> None:
    limits.create("api", rate=2.0, burst=1)
    limits.rate_limit("api", timeout=0)
    started = time.monotonic()
    with pytest.raises(AcquireTimeout) as info:
        limits.rate_limit("api", timeout=0.1)
    assert time.monotonic() - started <= 0.1 + 0.3
    assert info.value.timeout == 0.1
    # the failed call took no token: the next one is due 0.5 s after the first grant
    started = time.monotonic()
    limits.rate_limit("api", timeout=2)
    assert time.monotonic() - started <= 0.5 + WAKE_SLACK


@pytest.mark.timeout(30)
def test_grants_stay_within_burst_plus_rate_times_window_and_reach_the_rate(
    limits: Limits,
) -> None:
    rate, burst, duration, threads_n = 20.0, 4, 1.5, 6
    limits.create("api", rate=rate, burst=burst)
    holdings = Holdings(rates={"api": (rate, burst)})
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)
    deadline_box: list[float] = []

    def worker() -> None:
        try:
            if start.wait() == 0:
                deadline_box.append(time.monotonic() + duration)
            start.wait()
            deadline = deadline_box[0]
            while time.monotonic() < deadline:
                before = time.monotonic()
                limits.rate_limit("api", timeout=10)
                holdings.rate_grant("api", 1, before, time.monotonic())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not errors, errors
    holdings.check()
    grants: list[Grant] = holdings.grants("api")
    span = max(a for _, a, _ in grants) - min(b for b, _, _ in grants)
    achieved = (len(grants) - burst) / span
    assert achieved >= 0.9 * rate, f"saturated rate {achieved:.2f}/s, configured {rate}/s"


def test_concurrency_on_a_limit_with_slots_and_rate_needs_both(limits: Limits) -> None:
    limits.create("api", slots=5, rate=2.0, burst=1)
    first_before = time.monotonic()
    first = limits.acquire("api")
    first_after = time.monotonic()
    # four slots are free, but the only token is gone
    with pytest.raises(AcquireTimeout):
        limits.acquire("api", timeout=0)
    second = limits.acquire("api", timeout=3)
    after = time.monotonic()
    assert after - first_before >= 0.5 - CLOCK_SLACK
    assert after - first_after <= 0.5 + WAKE_SLACK
    assert limits.inspect("api").in_use == 2
    first.release()
    second.release()
    # slots come back, tokens never do
    assert limits.inspect("api").in_use == 0
    with pytest.raises(AcquireTimeout):
        limits.acquire("api", timeout=0)


def test_full_slots_block_concurrency_even_with_tokens(limits: Limits) -> None:
    limits.create("api", slots=1, rate=100.0, burst=10)
    held = limits.acquire("api")
    with pytest.raises(AcquireTimeout) as info:
        limits.acquire("api", timeout=0)
    assert info.value.blocked_on == "api"
    # rate_limit takes tokens only: it does not need a slot and holds none
    limits.rate_limit("api", timeout=0)
    assert limits.inspect("api").in_use == 1
    held.release()
    assert limits.inspect("api").in_use == 0


def test_failed_concurrency_attempts_take_no_tokens(limits: Limits) -> None:
    limits.create("api", slots=1, rate=0.2, burst=2)
    held = limits.acquire("api")  # one token left
    for _ in range(3):
        with pytest.raises(AcquireTimeout):
            limits.acquire("api", timeout=0)
    held.release()
    limits.acquire("api", timeout=0).release()  # the second token was still there
    with pytest.raises(AcquireTimeout):
        limits.acquire("api", timeout=0)


@pytest.mark.timeout(10)
def test_rate_limit_on_a_limit_without_rate_is_invalid_naming_it(limits: Limits) -> None:
    limits.create("pool-only", slots=3)
    limits.create("api", rate=1.0, burst=1)
    before = snapshot(limits, "pool-only", "api")
    with pytest.raises(InvalidRequest, match="pool-only"):
        limits.rate_limit("pool-only", timeout=None)
    with pytest.raises(InvalidRequest, match="pool-only"):
        limits.rate_limit(["api", "pool-only"], timeout=None)
    assert snapshot(limits, "pool-only", "api") == before
    assert limits.inspect("api").next_token_in == 0.0  # its token was not taken
    limits.rate_limit("api", timeout=0)


def test_rate_limit_on_several_limits_takes_from_each_atomically(limits: Limits) -> None:
    limits.create("fast", rate=100.0, burst=5)
    limits.create("slow", rate=0.5, burst=1)
    limits.rate_limit(["fast", "slow"], timeout=0)
    slow_wait = limits.inspect("slow").next_token_in
    assert slow_wait is not None
    assert slow_wait > 1.0
    fast_wait = limits.inspect("fast").next_token_in
    assert fast_wait == 0.0
    with pytest.raises(AcquireTimeout) as info:
        limits.rate_limit(["fast", "slow"], timeout=0)
    assert info.value.blocked_on == "slow"
    # all or nothing: 'fast' still has its 4 remaining tokens
    limits.rate_limit("fast", occupy=4, timeout=0)
