"""What ``run why`` computes beyond the causes: who held a limit's slots while a flow run
waited on it, and what the run would have taken with a limit lifted or more workers.

Holders come from the store's own record of every lease that held a limit's units
(:meth:`~sluice.store.base.Store.held_spans`), not from the run history: other flow
runs, and code outside flows, hold slots too. Estimates replay the run's recorded
task durations on a model of the limits and workers (see :func:`estimate`).
"""

from __future__ import annotations

import heapq
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sluice.store.base import HeldSpan

__all__ = [
    "FlowHolder",
    "Job",
    "LimitHolders",
    "OtherHolder",
    "estimate",
    "holders_of",
    "merge",
    "overlap",
]

Interval = tuple[float, float]

_FLOW_HOLDER = re.compile(r"^task (?P<task>.*) in flow (?P<flow>.*) run (?P<run>[0-9a-f]+)$")


@dataclass(frozen=True)
class FlowHolder:
    """Slots held by the task runs of one other flow run, in unit-seconds."""

    flow: str
    run_id: str
    unit_seconds: float


@dataclass(frozen=True)
class OtherHolder:
    """Slots held outside flows, by one holder label, in unit-seconds."""

    holder: str
    unit_seconds: float


@dataclass(frozen=True)
class LimitHolders:
    """Who held a limit's units while task runs of the flow run waited on it.

    Over the wall time during which at least one task run of the run was queued on
    the limit (``waited_seconds``), its ``slots`` give ``slots * waited_seconds``
    unit-seconds of capacity, split between this run's own task runs, other flow
    runs, holders outside flows, and units that were free (``free``: a hand-off on
    its way, a waiter at the head needing more units than were free, a paused
    process's grant not yet claimed). ``slots`` is None for a limit without slots
    (or no longer defined): then nothing is free by definition and ``free`` is None.
    """

    limit: str
    slots: int | None
    waited_seconds: float
    own: float
    own_running: float
    """The part of ``own`` during which those task runs' bodies ran (the rest: granted
    and not yet running, or ended and not yet released: dispatch, recording, release)."""
    flows: tuple[FlowHolder, ...]
    others: tuple[OtherHolder, ...]
    free: float | None

    @property
    def capacity(self) -> float | None:
        """Unit-seconds the limit offered while the run waited on it."""
        return None if self.slots is None else self.slots * self.waited_seconds

    def share(self, unit_seconds: float) -> float:
        """A part of the capacity as a fraction (0 when there is no capacity to share)."""
        capacity = self.capacity
        if capacity:
            return unit_seconds / capacity
        held = self.own + sum(f.unit_seconds for f in self.flows)
        held += sum(o.unit_seconds for o in self.others)
        return unit_seconds / held if held else 0.0


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """The union of intervals, as sorted disjoint ones."""
    out: list[Interval] = []
    for a, b in sorted(intervals):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def overlap(union: Sequence[Interval], a: float, b: float) -> float:
    """Seconds of [a, b] inside ``union`` (sorted disjoint intervals)."""
    lo, hi = 0, len(union)
    while lo < hi:  # the first interval ending after a
        mid = (lo + hi) // 2
        if union[mid][1] <= a:
            lo = mid + 1
        else:
            hi = mid
    total = 0.0
    for x, y in union[lo:]:
        if x >= b:
            break
        total += min(b, y) - max(a, x)
    return total


def holders_of(
    limit: str,
    slots: int | None,
    waiting: Sequence[Interval],
    spans: Iterable[HeldSpan],
    run_id: str,
    end: float,
    own_running: float = 0.0,
) -> LimitHolders:
    """Split a limit's capacity over ``waiting`` (sorted disjoint intervals) by holder;
    ``own_running``: unit-seconds the run's own bodies ran within ``waiting``."""
    waited = sum(b - a for a, b in waiting)
    own = 0.0
    flows: defaultdict[tuple[str, str], float] = defaultdict(float)
    others: defaultdict[str, float] = defaultdict(float)
    for span in spans:
        released = span.released_at if span.released_at is not None else end
        held = overlap(waiting, span.acquired_at, released) * span.units
        if held <= 0:
            continue
        match = _FLOW_HOLDER.match(span.holder)
        if match is None:
            others[span.holder] += held
        elif match["run"] == run_id:
            own += held
        else:
            flows[(match["flow"], match["run"])] += held
    free = None
    if slots is not None:
        used = own + sum(flows.values()) + sum(others.values())
        free = max(slots * waited - used, 0.0)
    return LimitHolders(
        limit,
        slots,
        waited,
        own,
        min(own_running, own),
        tuple(
            FlowHolder(flow, run, seconds)
            for (flow, run), seconds in sorted(flows.items(), key=lambda kv: -kv[1])
        ),
        tuple(
            OtherHolder(holder, seconds)
            for holder, seconds in sorted(others.items(), key=lambda kv: -kv[1])
        ),
        free,
    )


@dataclass(frozen=True)
class Job:
    """One task run as the estimate replays it: ready at ``ready``, busy ``seconds``."""

    ready: float
    seconds: float
    limits: tuple[str, ...]
    occupy: int


def estimate(
    jobs: Sequence[Job],
    start: float,
    capacity: Mapping[str, int | None],
    workers: int | None,
) -> float:
    """The makespan (seconds from ``start``) of replaying ``jobs`` first come, first
    served, each taking ``occupy`` units of each of its limits (``capacity``: units per
    limit, None for no bound) and one of ``workers`` (None: as many as needed) for its
    recorded time. Dependencies between task runs are taken as recorded (a job is
    ready when it was), so with more capacity the estimate is an upper bound."""
    order = sorted(range(len(jobs)), key=lambda i: (jobs[i].ready, i))
    free = {name: cap for name, cap in capacity.items() if cap is not None}
    idle = workers
    running: list[tuple[float, int]] = []
    now = start
    last = start
    for i in order:
        job = jobs[i]
        now = max(now, job.ready)
        while True:
            while running and running[0][0] <= now:
                _, j = heapq.heappop(running)
                _give_back(jobs[j], free)
                if idle is not None:
                    idle += 1
            fits = (idle is None or idle > 0) and all(
                free.get(name, job.occupy) >= job.occupy for name in job.limits
            )
            if fits or not running:
                break
            now = running[0][0]  # wait for the next job to end
        for name in job.limits:
            if name in free:
                free[name] -= job.occupy
        if idle is not None:
            idle -= 1
        ends = now + job.seconds
        heapq.heappush(running, (ends, i))
        last = max(last, ends)
    return last - start


def _give_back(job: Job, free: dict[str, int]) -> None:
    for name in job.limits:
        if name in free:
            free[name] += job.occupy
