"""Property tests of the pure rate math: never over the bound, and full speed under load."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.limits import gcra

rates = st.floats(min_value=0.01, max_value=10_000, allow_nan=False, allow_infinity=False)
bursts = st.integers(min_value=1, max_value=500)


def _simulate(rate: float, burst: int, asks: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """Feed (time, units) requests in time order; return the granted ones."""
    tat, granted = 0.0, []
    for now, n in asks:
        decision = gcra.decide(tat, now, rate, burst, n)
        if decision.granted:
            tat = decision.tat
            granted.append((now, n))
    return granted


@settings(max_examples=300, deadline=None)
@given(
    rate=rates,
    burst=bursts,
    gaps=st.lists(st.floats(min_value=0, max_value=2.0), min_size=1, max_size=200),
    sizes=st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=200),
)
def test_no_window_ever_sees_more_than_burst_plus_rate_times_window(
    rate: float, burst: int, gaps: list[float], sizes: list[int]
) -> None:
    now, asks = 1000.0, []
    for gap, size in zip(gaps, sizes, strict=False):
        now += gap
        asks.append((now, min(size, burst)))
    granted = _simulate(rate, burst, asks)
    for i, (start, _) in enumerate(granted):
        total = 0
        for when, n in granted[i:]:
            total += n
            window = when - start
            assert total <= burst + rate * window + 1e-6 * max(1.0, rate * window), (
                f"{total} units in {window}s > burst {burst} + rate {rate} * window"
            )


@settings(max_examples=200, deadline=None)
@given(rate=rates, burst=bursts, n=st.integers(min_value=1, max_value=500))
def test_a_refused_request_is_granted_exactly_when_its_wait_ends(
    rate: float, burst: int, n: int
) -> None:
    n = min(n, burst)
    tat = 0.0
    now = 50.0
    for _ in range(3):  # drain the bucket
        d = gcra.decide(tat, now, rate, burst, burst)
        tat = d.tat if d.granted else tat
    refused = gcra.decide(tat, now, rate, burst, n)
    if refused.granted:
        return
    assert refused.wait > 0
    assert refused.tat == tat  # a refusal changes nothing
    assert gcra.decide(tat, now + refused.wait, rate, burst, n).granted
    just_before = now + refused.wait * (1 - 1e-9) - 1e-9
    assert not gcra.decide(tat, just_before, rate, burst, n).granted


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(min_value=1, max_value=1000), burst=bursts)
def test_saturated_callers_get_exactly_the_configured_rate(rate: float, burst: int) -> None:
    # A caller that asks again the moment its wait ends gets burst + rate * T units in T s.
    tat, now, total, horizon = 0.0, 0.0, 0, 10.0
    while True:
        d = gcra.decide(tat, now, rate, burst, 1)
        if d.granted:
            tat, total = d.tat, total + 1
        else:
            now += d.wait
        if now > horizon:
            break
    expected = burst + rate * horizon
    assert math.floor(expected) - 1 <= total <= expected + 1


def test_a_full_bucket_grants_burst_at_once_then_paces() -> None:
    tat = 0.0
    for _ in range(5):
        d = gcra.decide(tat, 100.0, 10.0, 5, 1)
        assert d.granted
        tat = d.tat
    refused = gcra.decide(tat, 100.0, 10.0, 5, 1)
    assert not refused.granted
    assert refused.wait == pytest.approx(0.1)
    assert gcra.next_token_in(tat, 100.0, 10.0, 5) == pytest.approx(0.1)
    assert gcra.next_token_in(0.0, 100.0, 10.0, 5) == 0.0


def test_asking_for_more_than_the_burst_is_refused_loudly() -> None:
    with pytest.raises(ValueError, match="exceeds burst"):
        gcra.decide(0.0, 1.0, 10.0, 5, 6)
