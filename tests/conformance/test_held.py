"""The store's record of who held each limit's units, and when (``Store.held_spans``).

``run why`` splits a limit's capacity among holders from this record, so it must be
exact: every claimed lease that ended is on it once per limit with its holder, units
and times; leases held now are reported open; nothing else is.
"""

from __future__ import annotations

import time

from sluice import Limits
from sluice.store import acquire_store, release_store
from sluice.store.base import HeldSpan

from ._helpers import wait_until


def _spans(limits: Limits, names: list[str], since: float) -> list[HeldSpan]:
    store = acquire_store(limits.url)
    try:
        return store.held_spans(names, since, time.time() + 1)
    finally:
        release_store(store)


def test_released_leases_are_on_record_with_holder_units_and_times(limits: Limits) -> None:
    limits.create("db", slots=4)
    limits.create("api", slots=4)
    started = time.time()
    with limits.concurrency("db", occupy=2, holder="etl"):
        pass
    with limits.concurrency(["db", "api"], holder="both"):
        pass
    spans = _spans(limits, ["db", "api"], started - 1)
    seen = sorted((s.limit, s.holder, s.units) for s in spans)
    assert seen == [("api", "both", 1), ("db", "both", 1), ("db", "etl", 2)]
    for span in spans:
        assert span.released_at is not None
        assert started - 1 <= span.acquired_at <= span.released_at <= time.time() + 1
    both = [s for s in spans if s.holder == "both"]
    assert both[0].lease_id == both[1].lease_id  # one lease, one entry per limit


def test_leases_held_now_are_reported_open_and_only_the_limits_asked_about(
    limits: Limits,
) -> None:
    limits.create("db", slots=2)
    limits.create("other", slots=2)
    started = time.time()
    lease = limits.acquire("db", holder="still here")
    with limits.concurrency("other", holder="elsewhere"):
        pass
    spans = _spans(limits, ["db"], started - 1)
    assert [(s.holder, s.released_at, s.lease_id) for s in spans] == [
        ("still here", None, lease.id)
    ]
    lease.release()
    (span,) = _spans(limits, ["db"], started - 1)
    assert span.released_at is not None and span.lease_id == lease.id


def test_the_time_range_selects_spans_that_overlap_it(limits: Limits) -> None:
    limits.create("db", slots=1)
    with limits.concurrency("db", holder="early"):
        pass
    between = time.time()
    wait_until(lambda: time.time() > between + 0.01, 1.0, "the clock to move on")
    with limits.concurrency("db", holder="late"):
        pass
    store = acquire_store(limits.url)
    try:
        later = store.held_spans(["db"], between, time.time() + 1)
        earlier = store.held_spans(["db"], between - 60, between)
    finally:
        release_store(store)
    assert [s.holder for s in later] == ["late"]
    assert [s.holder for s in earlier] == ["early"]


def test_revoked_and_reclaimed_leases_are_on_record_too(limits: Limits) -> None:
    limits.create("db", slots=2)
    started = time.time()
    limits.acquire("db", holder="revoked")
    assert limits.reset("db") == 1
    spans = _spans(limits, ["db"], started - 1)
    assert [(s.holder, s.released_at is not None) for s in spans] == [("revoked", True)]


def test_unknown_limits_and_no_limits_give_no_spans(limits: Limits) -> None:
    limits.create("db", slots=1)
    started = time.time()
    with limits.concurrency("db", holder="first"):
        pass
    assert [s.holder for s in _spans(limits, ["db"], started - 1)] == ["first"]
    assert _spans(limits, ["nothing-like-it"], started - 1) == []
    assert _spans(limits, [], started - 1) == []
