"""``run why``: where a flow run's wall time went, by cause, from the recorded states.

Each task run's states cut its life into intervals, each with one cause:

==========================  ===========================================================
state                       cause
==========================  ===========================================================
Pending                     ``pending``: upstream futures, then the first acquire step
Waiting, ``limit`` = X      ``limit``: waiting on limit X (queued behind its holders)
Waiting, no limit           ``worker``: granted, waiting for a free worker of the runner
Running                     ``running``
Retrying                    ``retry``: the retry delay (no slots held)
==========================  ===========================================================

An interval runs from the state's timestamp to the next state's (or, for a
run that never ended, to the end of the flow run). Two views are reported:

* **task time** — the sum of these intervals over all task runs, per cause
  ("task-seconds": 100 tasks each waiting 1 s on a limit give 100 s);
* **wall time** — the flow run's wall time (first Running to its end) cut at
  every state change, each slice given to ONE cause by precedence: ``running``
  if any task runs; else waiting on a limit (the limit with the most task runs
  waiting in that slice, ties by name); else ``worker``; else ``retry``; else
  ``pending``; else ``flow``: the flow's own code, with no task run active.
  The wall-time shares add up to the flow's wall time; a pause in the flow
  (no task running) is named by its cause.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from sluice.store.history import FlowRunDetail, StateRecord

__all__ = ["Cause", "WhyReport", "explain", "task_times"]

_FINAL = {"Completed", "Failed", "Crashed", "Cancelled", "TimedOut"}
_ORDER = {"running": 0, "limit": 1, "worker": 2, "retry": 3, "pending": 4, "flow": 5}


@dataclass(frozen=True)
class Cause:
    """The time one cause took: wall-clock seconds of the flow, and task-seconds."""

    kind: str
    """``running``, ``limit``, ``worker``, ``retry``, ``pending`` or ``flow``."""
    limit: str | None
    """For ``limit``: the limit's name."""
    wall_seconds: float
    task_seconds: float
    task_runs: int
    """Task runs that spent time on this cause."""

    @property
    def label(self) -> str:
        """How the cause reads in a table."""
        return {
            "running": "running",
            "limit": f"waiting on limit {self.limit!r}",
            "worker": "waiting for a free worker",
            "retry": "retry delays",
            "pending": "pending (upstream futures, admission)",
            "flow": "flow code, no task run active",
        }[self.kind]


@dataclass(frozen=True)
class WhyReport:
    """The breakdown of one flow run's wall time by cause; ``str()`` is what the CLI prints."""

    run_id: str
    flow: str
    state: str
    wall_seconds: float
    task_runs: int
    causes: tuple[Cause, ...]
    """Every cause with time on it: wall time first, most first."""

    def cause(self, kind: str, limit: str | None = None) -> Cause | None:
        """The entry of one cause, if it took any time."""
        for cause in self.causes:
            if cause.kind == kind and cause.limit == limit:
                return cause
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        data = asdict(self)
        data["causes"] = [{**asdict(c), "label": c.label} for c in self.causes]
        return data

    def render(self) -> str:
        """A table: each cause with its share of wall time and its task time."""
        lines = [
            f"flow run {self.run_id} ({self.flow}): {self.state}, "
            f"wall time {self.wall_seconds:.3f} s, {self.task_runs} task runs",
            "",
        ]
        labels = [c.label for c in self.causes]
        width = max([len(label) for label in labels] + [len("cause")])
        lines.append(f"{'cause':<{width}}  {'wall time':>18}  {'task time':>12}  task runs")
        for cause, label in zip(self.causes, labels, strict=True):
            share = 100.0 * cause.wall_seconds / self.wall_seconds if self.wall_seconds else 0.0
            runs = str(cause.task_runs) if cause.kind != "flow" else "-"
            lines.append(
                f"{label:<{width}}  {cause.wall_seconds:9.3f} s {share:5.1f}%  "
                f"{cause.task_seconds:10.3f} s  {runs:>9}"
            )
        summary = self._summary()
        if summary:
            lines += ["", summary]
        return "\n".join(lines)

    def _summary(self) -> str:
        waits = sorted(
            (c for c in self.causes if c.kind in ("limit", "worker", "retry") and c.task_seconds),
            key=lambda c: -c.task_seconds,
        )
        if not waits:
            return "no task run waited."
        top = waits[0]
        return (
            f"most waiting: {top.label}, {top.task_seconds:.3f} task-seconds over "
            f"{top.task_runs} task runs"
        )

    def __str__(self) -> str:
        return self.render()


def _cause_of(state: StateRecord) -> tuple[str, str | None] | None:
    if state.name == "Running":
        return ("running", None)
    if state.name == "Waiting":
        return ("limit", state.limit) if state.limit else ("worker", None)
    if state.name == "Retrying":
        return ("retry", None)
    if state.name == "Pending":
        return ("pending", None)
    return None  # final


def explain(detail: FlowRunDetail) -> WhyReport:
    """Break a recorded flow run's wall time down by cause (see the module docstring)."""
    flow = detail.run
    start = flow.started_at if flow.started_at is not None else flow.created_at
    end = flow.ended_at
    if end is None:
        stamps = [s.timestamp for t in detail.task_runs for s in t.states]
        end = max([time.time(), *stamps])
    intervals: list[tuple[float, float, tuple[str, str | None]]] = []
    task_seconds: defaultdict[tuple[str, str | None], float] = defaultdict(float)
    runs_per_cause: dict[tuple[str, str | None], set[str]] = defaultdict(set)
    for task_run in detail.task_runs:
        states = list(task_run.states)
        for i, state in enumerate(states):
            cause = _cause_of(state)
            if cause is None:
                continue
            until = states[i + 1].timestamp if i + 1 < len(states) else end
            if until <= state.timestamp:
                continue
            intervals.append((state.timestamp, until, cause))
            task_seconds[cause] += until - state.timestamp
            runs_per_cause[cause].add(task_run.run.id)

    wall: defaultdict[tuple[str, str | None], float] = defaultdict(float)
    cuts = sorted({start, end, *(t for a, b, _ in intervals for t in (a, b) if start < t < end)})
    events: dict[float, list[tuple[int, tuple[str, str | None]]]] = defaultdict(list)
    for a, b, cause in intervals:
        if b > start and a < end:  # clipped to the flow's running time
            events[max(a, start)].append((1, cause))
            events[min(b, end)].append((-1, cause))
    active: Counter[tuple[str, str | None]] = Counter()
    for i, t in enumerate(cuts[:-1]):
        for delta, cause in events.get(t, ()):
            active[cause] += delta
        live = [c for c, n in active.items() if n > 0]
        chosen = (
            min(live, key=lambda c: (_ORDER[c[0]], -active[c], c[1] or ""))
            if live
            else ("flow", None)
        )
        wall[chosen] += cuts[i + 1] - t

    keys = set(wall) | set(task_seconds)
    causes = [
        Cause(
            kind,
            limit,
            wall.get((kind, limit), 0.0),
            task_seconds.get((kind, limit), 0.0),
            len(runs_per_cause.get((kind, limit), ())),
        )
        for kind, limit in keys
    ]
    causes.sort(key=lambda c: (-c.wall_seconds, -c.task_seconds, _ORDER[c.kind], c.limit or ""))
    return WhyReport(
        flow.id, flow.flow, flow.state, max(end - start, 0.0), len(detail.task_runs), tuple(causes)
    )


def task_times(states: tuple[StateRecord, ...], end: float | None = None) -> tuple[float, float]:
    """(waited, ran) seconds of one task run: Pending, Waiting and Retrying intervals, and
    Running intervals; a run that has not ended counts up to ``end`` (default: now)."""
    waited = ran = 0.0
    for i, state in enumerate(states):
        cause = _cause_of(state)
        if cause is None:
            continue
        until = states[i + 1].timestamp if i + 1 < len(states) else (end or time.time())
        span = max(until - state.timestamp, 0.0)
        if cause[0] == "running":
            ran += span
        else:
            waited += span
    return waited, ran
