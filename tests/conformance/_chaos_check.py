"""The invariant checker of the multi-process chaos test: it replays what the workers
wrote (``_chaos_workers``) against what the controller did (kills, pauses, restarts).

A hold is counted against its limits from its ``enter`` (after the grant returned)
to its end: its ``exit`` (before release was called), or the SIGKILL of its process.
Two kinds of holder are counted only up to an earlier moment, as the README allows:

- a holder whose process was paused (SIGSTOP) during the hold for longer than the
  lease TTL: up to the pause (its lease lapsed meanwhile; it must be told LeaseLost
  when it resumes, which is checked too);
- a holder told LeaseLost (its ``on_lost`` callback ran) while inside: up to then.

Any other over-admission fails the check, as does a fence that does not grow (a grant
that started after another was granted must have a greater fence), an ``error`` event,
or a hold that never ended in a process that was not killed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._helpers import peak_units


@dataclass
class Controlled:
    """What the controller did to one worker process (monotonic times)."""

    killed_at: float | None = None
    pauses: list[tuple[float, float]] = field(default_factory=list)
    """(stopped at, resumed at) of every SIGSTOP; resumed at +inf if never resumed."""


@dataclass
class Hold:
    worker: int
    lease: str
    fence: int
    names: tuple[str, ...]
    occupy: int
    called: float
    enter: float
    exit: float | None = None
    told: float | None = None
    released: str | None = None

    @property
    def lost(self) -> bool:
        return self.told is not None or self.released == "lost"


@dataclass
class Replay:
    """What the events show, and every way they break the invariants."""

    holds: list[Hold]
    counts: Counter[str]
    violations: list[str]
    peaks: dict[str, int]
    paused_past_ttl: int
    """Holds whose process was paused during them for longer than the lease TTL."""
    store_errors: Counter[str]
    """The StoreErrors workers saw (acquiring or releasing), by message."""
    error_times: list[float]
    """When each of them was reported."""


def read_events(path: Path) -> list[dict[str, Any]]:
    """A worker's events; a torn last line (the process was killed mid-write) is dropped."""
    events = []
    lines = path.read_text().split("\n")
    for number, line in enumerate(lines):
        if not line:
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise
    return events


def replay(
    events: Mapping[int, Sequence[Mapping[str, Any]]],
    controlled: Mapping[int, Controlled],
    slots: Mapping[str, int],
    lease_ttl: float,
) -> Replay:
    """Check ``events`` (by worker index) against what the controller did to each worker."""
    holds: dict[str, Hold] = {}
    counts: Counter[str] = Counter()
    store_errors: Counter[str] = Counter()
    error_times: list[float] = []
    violations: list[str] = []
    for worker, worker_events in events.items():
        for event in worker_events:
            kind = event["e"]
            counts[kind] += 1
            if "error" in event and kind != "error":
                store_errors[f"{kind}: {event['error']}"] += 1
                error_times.append(event["t"])
            if kind == "enter":
                holds[event["lease"]] = Hold(
                    worker,
                    event["lease"],
                    event["fence"],
                    tuple(event["names"]),
                    event["occupy"],
                    event["call"],
                    event["t"],
                )
            elif kind in ("exit", "told", "released"):
                hold = holds.get(event["lease"])
                if hold is None:
                    violations.append(f"worker {worker}: {kind} of an unknown lease: {event}")
                elif kind == "exit":
                    hold.exit = event["t"]
                elif kind == "told":
                    hold.told = event["t"] if hold.told is None else hold.told
                else:
                    hold.released = event["how"]
                    counts[f"released-{event['how']}"] += 1
            elif kind == "error":
                violations.append(f"worker {worker} failed: {event['error']}")

    intervals: dict[str, list[tuple[float, float, int]]] = {name: [] for name in slots}
    spans: dict[str, list[tuple[float, float, Hold]]] = {name: [] for name in slots}
    paused_past_ttl = 0
    for hold in holds.values():
        control = controlled.get(hold.worker, Controlled())
        end = hold.exit if hold.exit is not None else control.killed_at
        if end is None:
            violations.append(f"hold {hold} never ended, and its process was not killed")
            continue
        counted_end = end
        for stopped, resumed in control.pauses:
            if hold.enter <= stopped <= end and resumed - stopped > lease_ttl:
                paused_past_ttl += 1
                counted_end = min(counted_end, stopped)
                if hold.exit is not None and not hold.lost:
                    violations.append(f"{hold} outlived its lease while paused, never told")
        if hold.told is not None:
            counted_end = min(counted_end, hold.told)
        for name in hold.names:
            intervals[name].append((hold.enter, counted_end, hold.occupy))
            spans[name].append((hold.enter, counted_end, hold))

    peaks = {}
    for name, limit_slots in slots.items():
        peak, at = peak_units(intervals[name])
        peaks[name] = peak
        if peak > limit_slots:
            inside = [h for start, end, h in spans[name] if start <= at <= end]
            violations.append(
                f"{name!r} held {peak} units > {limit_slots} slots at {at:.3f}: "
                + "; ".join(str(h) for h in inside)
            )
        # Fences grow: a grant made after another hold was entered has a greater fence.
        ordered = sorted(spans[name], key=lambda span: span[2].enter)
        highest: Hold | None = None
        index = 0
        for _, _, later in sorted(spans[name], key=lambda span: span[2].called):
            while index < len(ordered) and ordered[index][2].enter < later.called:
                earlier = ordered[index][2]
                if highest is None or earlier.fence > highest.fence:
                    highest = earlier
                index += 1
            if highest is not None and later.fence <= highest.fence:
                violations.append(f"fence of {later} is not above that of earlier {highest}")
    return Replay(
        list(holds.values()), counts, violations, peaks, paused_past_ttl, store_errors, error_times
    )
