"""A limit's recent past, rebuilt from what the store keeps, for the dashboard's chart.

What is exact and what is sampled:

* **Units in use** come from the store's record of held units
  (:meth:`~sluice.store.base.Store.held_spans`): every claimed lease, from its grant to
  its end, so the most units held in each slice of time is exact, whenever the
  dashboard started (the store keeps the newest 1,000,000 records; Redis 100,000 per
  limit).
* **Slots** come from the audit record of admin actions: each ``update`` that changed
  them says from what to what, so the line follows every change (exact, as far back as
  the record goes; a limit deleted and created again keeps its new value back to the
  delete).
* **Waiters** are in no store record. Flow task runs that waited on the limit are
  rebuilt from the run history (their ``Waiting`` states), exact for them; every other
  waiter (direct ``acquire`` calls) is seen only in the dashboard's own samples, taken
  every interval since it started, and gone when it restarts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sluice.store.audit import AdminRecord
from sluice.store.base import HeldSpan
from sluice.store.history import FlowRunDetail

__all__ = ["Timeline", "build_timeline", "in_use_bins", "run_waits", "slots_steps"]

Interval = tuple[float, float, int]
"""(start, end, amount)."""


def _sweep(intervals: Iterable[Interval], since: float, width: float, bins: int) -> list[int]:
    """The most of ``amount`` summed over overlapping intervals, in each of ``bins`` slices."""
    events: list[tuple[float, int]] = []
    until = since + width * bins
    for start, end, amount in intervals:
        start, end = max(start, since), min(end, until)
        if end > start and amount:
            events.append((start, amount))
            events.append((end, -amount))
    events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same moment
    most = [0] * bins
    level, current = 0, 0
    for at, delta in events:
        index = min(int((at - since) / width), bins - 1)
        for i in range(current, index):  # the level held through the slices in between
            most[i] = max(most[i], level)
        if at > since + index * width:  # and into this slice, up to this moment
            most[index] = max(most[index], level)
        current = index
        level += delta
        most[index] = max(most[index], level)
    for i in range(current, bins):
        most[i] = max(most[i], level)
    return most


def in_use_bins(spans: Sequence[HeldSpan], since: float, width: float, bins: int) -> list[int]:
    """The most units held at once in each slice, from the store's record of held units."""
    until = since + width * bins
    return _sweep(
        (
            (s.acquired_at, s.released_at if s.released_at is not None else until, s.units)
            for s in spans
        ),
        since,
        width,
        bins,
    )


def run_waits(detail: FlowRunDetail, name: str, until: float) -> list[tuple[float, float]]:
    """When each task run of a flow run was waiting on limit ``name`` (from its states)."""
    out = []
    end = detail.run.ended_at if detail.run.ended_at is not None else until
    for task_run in detail.task_runs:
        if name not in task_run.run.limits:
            continue
        states = task_run.states
        for i, state in enumerate(states):
            if state.name == "Waiting" and state.limit == name:
                stop = states[i + 1].timestamp if i + 1 < len(states) else end
                out.append((state.timestamp, stop))
    return out


def slots_steps(
    records: Sequence[AdminRecord], current: int | None, since: float
) -> list[tuple[float, int | None]]:
    """The limit's slots from ``since`` on: (when, slots) at ``since`` and at each change,
    walked back from the ``current`` value through the audit records (newest first)."""
    value = current
    steps: list[tuple[float, int | None]] = []
    for record in records:
        if record.at < since:
            break
        change = record.changes.get("slots")
        if record.action == "update" and isinstance(change, dict):
            steps.append((record.at, value))
            value = change.get("from")
        elif record.action == "delete":
            steps.append((record.at, value))
            value = (record.changes.get("limit") or {}).get("slots")
    steps.append((since, value))
    steps.reverse()
    return steps


@dataclass(frozen=True)
class Timeline:
    """A limit over ``[since, since + bin_seconds * bins)``, slice by slice."""

    since: float
    bin_seconds: float
    in_use: list[int]
    """The most units held at once in each slice (exact: the store's record)."""
    waiting_runs: list[int]
    """The most flow task runs waiting on the limit at once in each slice (run history)."""
    waiting_sampled: list[int | None]
    """The most waiters the dashboard's samples saw in each slice (None: no sample then)."""
    slots: list[tuple[float, int | None]]
    """(when, slots) from ``since`` on, at each change (the audit record)."""
    sampled_since: float | None
    """When the dashboard's oldest sample in the window was taken (None: none yet)."""

    @property
    def until(self) -> float:
        """The end of the last slice."""
        return self.since + self.bin_seconds * len(self.in_use)

    def to_json(self) -> dict[str, Any]:
        """What ``GET /api/limits/NAME`` answers as ``timeline``."""
        return {
            "since": self.since,
            "until": self.until,
            "bin_seconds": self.bin_seconds,
            "in_use": self.in_use,
            "waiting_runs": self.waiting_runs,
            "waiting_sampled": self.waiting_sampled,
            "slots": [[at, slots] for at, slots in self.slots],
            "sampled_since": self.sampled_since,
        }


def build_timeline(
    since: float,
    until: float,
    bins: int,
    spans: Sequence[HeldSpan],
    waits: Sequence[tuple[float, float]],
    samples: Sequence[tuple[float, int]],
    records: Sequence[AdminRecord],
    current_slots: int | None,
) -> Timeline:
    """The timeline from what was read: held spans, task runs' waits, the dashboard's
    samples (when, waiters) and the audit records (newest first)."""
    width = max((until - since) / bins, 1e-3)
    sampled: list[int | None] = [None] * bins
    first: float | None = None
    for at, waiting in samples:
        if since <= at < until:
            i = min(int((at - since) / width), bins - 1)
            sampled[i] = max(sampled[i] or 0, waiting)
            first = at if first is None else min(first, at)
    return Timeline(
        since,
        width,
        in_use_bins(spans, since, width, bins),
        _sweep(((start, end, 1) for start, end in waits), since, width, bins),
        sampled,
        slots_steps(records, current_slots, since),
        first,
    )
