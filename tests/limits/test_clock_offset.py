"""ClockOffset: a late reply (a paused process) never makes the store's clock look earlier."""

from __future__ import annotations

import time

from sluice.store.base import ClockOffset


def test_a_late_reading_does_not_lower_the_estimate() -> None:
    clock = ClockOffset()
    local = time.time()
    clock.observe(local + 5.0, local)  # the store runs 5 s ahead
    clock.observe(local + 5.0, local + 1.5)  # the same reading seen 1.5 s late
    assert abs(clock.store_now() - (time.time() + 5.0)) < 0.1


def test_a_higher_reading_raises_the_estimate_and_drift_is_followed() -> None:
    clock = ClockOffset()
    local = time.time()
    clock.observe(local + 1.0, local)
    clock.observe(local + 3.0, local)
    assert abs(clock.store_now() - (time.time() + 3.0)) < 0.1
    clock._at -= 1000.0  # 1,000 s since: up to 1 s of downward drift is allowed
    clock.observe(local + 2.5, local)
    assert abs(clock.store_now() - (time.time() + 2.5)) < 0.1


def test_with_no_reading_the_store_clock_is_this_hosts() -> None:
    assert abs(ClockOffset().store_now() - time.time()) < 0.1
