"""The limit page's pure parts: what holds up the head of a queue, wait percentiles from a
histogram, the timeline rebuilt from held spans, waits and the audit record, and times."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from sluice.limits.model import WAIT_BUCKETS, Limit, LimitStatus, LimitTotals, Waiter
from sluice.report.timeline import build_timeline, in_use_bins, slots_steps
from sluice.report.times import clock, json_time, parse_time, shown
from sluice.report.waits import head_of_line, wait_percentiles
from sluice.store.audit import Actor, AdminRecord
from sluice.store.base import HeldSpan

NOW = datetime(2025, 1, 31, 12, 0, 0, tzinfo=timezone.utc)
WHO = Actor("alice", "build-1", 42, "sluice")


def _waiter(position: int, occupy: int, count: int = 1) -> Waiter:
    return Waiter(f"t{position}", occupy, f"w{position}", "h", 1, NOW, position, count)


def _status(
    slots: int | None,
    in_use: int,
    *waiters: Waiter,
    active: bool = True,
    token_in: float | None = None,
) -> LimitStatus:
    rate = 1.0 if token_in is not None else None
    limit = Limit("db", slots=slots, rate=rate, burst=1 if rate else None, active=active)
    return LimitStatus(limit, in_use, waiters=list(waiters), next_token_in=token_in)


def test_head_of_line_blocking_names_the_free_units_and_what_the_head_needs() -> None:
    head = head_of_line(_status(3, 2, _waiter(1, 2), _waiter(2, 1, count=2)))
    assert (head.kind, head.free, head.head_needs, head.behind) == ("blocked", 1, 2, 2)
    assert head.text.startswith("1 unit free; the waiter at the head needs 2, so it waits")
    assert "and 2 more wait behind it" in head.text
    two_free = head_of_line(_status(5, 2, _waiter(1, 4)))
    assert two_free.text.startswith("3 units free; the waiter at the head needs 4")
    assert two_free.behind == 0 and "behind" not in two_free.text


def test_head_of_line_other_kinds() -> None:
    assert head_of_line(_status(2, 0)).to_json() == {
        "kind": "none",
        "free": 2,
        "head_needs": None,
        "behind": 0,
        "text": "nobody waits",
    }
    full = head_of_line(_status(2, 2, _waiter(1, 1), _waiter(2, 1)))
    assert (full.kind, full.free) == ("full", 0)
    assert full.text == "no unit free (2 of 2 in use); 1 more wait behind it"
    assert head_of_line(_status(2, 2, _waiter(1, 1), active=False)).kind == "disabled"
    rated = head_of_line(_status(None, 0, _waiter(1, 1), token_in=0.25))
    assert (rated.kind, rated.free) == ("rate", None)
    assert rated.text == "the waiter at the head waits for a rate token, due in 0.25 s"
    other = head_of_line(_status(2, 0, _waiter(1, 1)))
    assert other.kind == "other" and other.text.startswith("2 units free and the head needs 1")


def _totals(*counts: int) -> LimitTotals:
    buckets = list(counts) + [0] * (len(WAIT_BUCKETS) + 1 - len(counts))
    return LimitTotals(grants=sum(counts), wait_buckets=tuple(buckets))


def test_wait_percentiles_are_the_buckets_the_ranks_fall_in() -> None:
    assert wait_percentiles(LimitTotals()) == []
    # 90 at once (<= 1 ms), 8 in (100 ms, 500 ms], 2 past the last bound (300 s).
    totals = _totals(90, 0, 0, 0, 0, 8, *([0] * (len(WAIT_BUCKETS) - 6)), 2)
    got = [p.to_json() for p in wait_percentiles(totals)]
    assert got == [
        {"percentile": 50, "above": 0.0, "upto": 0.001},
        {"percentile": 95, "above": 0.1, "upto": 0.5},
        {"percentile": 99, "above": 300.0, "upto": None},
    ]
    one = [p.upto for p in wait_percentiles(_totals(0, 0, 1))]
    assert one == [0.01, 0.01, 0.01]


def _span(units: int, start: float, end: float | None) -> HeldSpan:
    return HeldSpan("db", "h", units, start, end, f"l{start}")


def test_in_use_bins_are_the_most_held_at_once_in_each_slice() -> None:
    spans = [_span(1, 0.0, 25.0), _span(2, 5.0, 15.0), _span(1, 15.0, None), _span(3, -50, -1)]
    assert in_use_bins(spans, 0.0, 10.0, 4) == [3, 3, 2, 1]  # at 15 one ends as one starts
    # An end and a start at the same moment do not add up.
    assert in_use_bins([_span(1, 0.0, 10.0), _span(1, 10.0, 20.0)], 0.0, 20.0, 1) == [1]


def _record(action: str, at: float, **changes: object) -> AdminRecord:
    return AdminRecord("db", action, at, WHO, changes)


def test_the_slots_line_walks_back_through_the_audit_record() -> None:
    records = [  # newest first
        _record("update", 300.0, slots={"from": 4, "to": 6}),
        _record("reset", 250.0, revoked=1),
        _record("update", 200.0, rate={"from": None, "to": 1.0}),
        _record("delete", 150.0, force=False, limit={"name": "db", "slots": 2}),
        _record("update", 50.0, slots={"from": 1, "to": 2}),  # before the window
    ]
    assert slots_steps(records, 6, 100.0) == [(100.0, 2), (150.0, 4), (300.0, 6)]
    assert slots_steps([], 6, 100.0) == [(100.0, 6)]


def test_build_timeline_puts_samples_and_waits_in_their_slices() -> None:
    timeline = build_timeline(
        0.0,
        40.0,
        4,
        [_span(2, 0.0, 12.0)],
        [(5.0, 15.0), (8.0, 9.0)],
        [(1.0, 3), (2.0, 5), (35.0, 1), (99.0, 7)],
        [_record("update", 20.0, slots={"from": 2, "to": 3})],
        3,
    )
    data = timeline.to_json()
    assert data["in_use"] == [2, 2, 0, 0]
    assert data["waiting_runs"] == [2, 1, 0, 0]
    assert data["waiting_sampled"] == [5, None, None, 1]
    assert data["slots"] == [[0.0, 2], [20.0, 3]]
    assert (data["since"], data["until"], data["bin_seconds"]) == (0.0, 40.0, 10.0)
    assert data["sampled_since"] == 1.0


def test_times_are_shown_in_utc_with_a_z_and_read_in_either_form() -> None:
    moment = NOW.timestamp() + 0.123456
    assert shown(moment) == "2025-01-31T12:00:00Z"
    assert clock(moment) == "12:00:00Z"
    assert shown(None) == "-" and clock(None, "never") == "never"
    assert json_time(moment) == "2025-01-31T12:00:00.123456+00:00"
    assert json_time(datetime(2025, 1, 31, 12)) == "2025-01-31T12:00:00.000000+00:00"
    for text in ("2025-01-31T12:00:00Z", "2025-01-31T12:00:00", "2025-01-31T13:00:00+01:00"):
        assert parse_time(text) == NOW.timestamp(), text
    assert parse_time("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_time("90", now=100.0) == 10.0
    with pytest.raises(ValueError, match="'yesterday' is not a time: use an ISO 8601 time"):
        parse_time("yesterday")
