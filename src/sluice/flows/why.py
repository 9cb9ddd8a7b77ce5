"""``run why``: what held a flow run back, who held the slots it waited for, what would
have helped; from the recorded states and the store's record of who held each limit.

Each task run's states cut its life into intervals, each with one cause:

==========================  ===========================================================
state                       cause
==========================  ===========================================================
Pending                     ``pending``: upstream futures, then the first acquire step
Waiting, ``limit`` = X      ``limit``: queued on limit X, behind its holders
Waiting, no limit           ``worker``: holding its slots, waiting for a free worker
Running                     ``running``: the work itself
Retrying                    ``retry``: the retry delay (no slots held)
==========================  ===========================================================

An interval runs from the state's timestamp to the next state's (or, for a run
that never ended, to the end of the flow run). Two views are reported:

* **task time**: the sum of these intervals over all task runs, per cause
  ("task-seconds": 100 tasks each waiting 1 s on a limit give 100 s);
* **wall time**: the flow run's wall time cut at every state change, each slice
  given to the ONE cause that bounded it then, by precedence: ``worker`` if some task
  run held slots waiting for a worker (*worker-bound*: whoever queues on a limit
  then queues behind slots that wait for workers); else a limit if some task run was
  queued on it (the limit with the most task runs queued, ties by name:
  *limit-bound*); else ``retry`` if some task run slept a retry delay that the
  flow's end waited for (it ended after every task run that was active meanwhile);
  else ``running`` if some task run ran (*work-bound*); else ``pending``; else
  ``flow``: the flow's own code, no task run active. The shares add up to the wall
  time, and the biggest is the headline.

For every limit the run was queued on, :class:`~sluice.flows.attribution.LimitHolders`
says who held its units meanwhile; :func:`~sluice.flows.attribution.estimate` replays
the recorded task durations with the top limit lifted, or with enough workers.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sluice.errors import LimitNotFound
from sluice.flows.attribution import Job, LimitHolders, estimate, holders_of, merge, overlap
from sluice.store import acquire_store, release_store
from sluice.store.base import HeldSpan
from sluice.store.history import FlowRunDetail, StateRecord

__all__ = ["Cause", "Estimate", "WhyReport", "explain", "explain_recorded", "task_times"]

_ORDER = {"worker": 0, "limit": 1, "retry": 2, "running": 3, "pending": 4, "flow": 5}

Key = tuple[str, str | None]


@dataclass(frozen=True)
class Cause:
    """The time one cause took: wall-clock seconds of the flow, and task-seconds."""

    kind: str
    """``limit``, ``worker``, ``retry``, ``running``, ``pending`` or ``flow``."""
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
            "running": "running (work-bound)",
            "limit": f"waiting on limit {self.limit!r}",
            "worker": "waiting for a free worker",
            "retry": "retry delays",
            "pending": "pending (upstream futures, admission)",
            "flow": "flow code, no task run active",
        }[self.kind]


@dataclass(frozen=True)
class Estimate:
    """What the run would have taken under other conditions, replayed from its records."""

    what: str
    """E.g. ``without limit 'db'`` or ``with 20 workers instead of 6``."""
    seconds: float


@dataclass(frozen=True)
class WhyReport:
    """Why one flow run took as long as it did; ``str()`` is what the CLI prints."""

    run_id: str
    flow: str
    state: str
    wall_seconds: float
    task_runs: int
    causes: tuple[Cause, ...]
    """Every cause with time on it: wall time first, most first."""
    headline: str = ""
    """The biggest cause, in words."""
    holders: tuple[LimitHolders, ...] = ()
    """For each limit the run was queued on: who held its units meanwhile (empty when
    the store keeps no such record)."""
    estimates: tuple[Estimate, ...] = ()
    """What would have helped, as replayed from the recorded task durations."""
    modelled_seconds: float | None = None
    """The replay of the run as recorded (how far to trust the estimates)."""
    notes: tuple[str, ...] = field(default=())

    def cause(self, kind: str, limit: str | None = None) -> Cause | None:
        """The entry of one cause, if it took any time."""
        for cause in self.causes:
            if cause.kind == kind and cause.limit == limit:
                return cause
        return None

    def holders_of(self, limit: str) -> LimitHolders | None:
        """Who held ``limit`` while the run waited on it, if recorded."""
        for entry in self.holders:
            if entry.limit == limit:
                return entry
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        data = asdict(self)
        data["causes"] = [{**asdict(c), "label": c.label} for c in self.causes]
        data["holders"] = [{**asdict(h), "capacity": h.capacity} for h in self.holders]
        return data

    def render(self) -> str:
        """The headline, the causes table, the holders of each limit, the estimates."""
        lines = [
            f"flow run {self.run_id} ({self.flow}): {self.state}, "
            f"wall time {self.wall_seconds:.3f} s, {self.task_runs} task runs",
        ]
        if self.headline:
            lines += ["", self.headline]
        lines += ["", *self._causes_table()]
        for entry in self.holders:
            lines += ["", *_holders_table(entry)]
        if self.estimates:
            lines += ["", "what would have helped (replaying the recorded task durations):"]
            for item in self.estimates:
                lines.append(f"  {item.what}: about {_seconds(item.seconds)}")
            if self.modelled_seconds is not None:
                lines.append(
                    f"  (the replay of this run as recorded takes {_seconds(self.modelled_seconds)}"
                    f" against {_seconds(self.wall_seconds)} measured)"
                )
        for note in self.notes:
            lines += ["", note]
        return "\n".join(lines)

    def _causes_table(self) -> list[str]:
        labels = [c.label for c in self.causes]
        width = max([len(label) for label in labels] + [len("what bounded it")])
        lines = [f"{'what bounded it':<{width}}  {'wall time':>18}  {'task time':>12}  task runs"]
        for cause, label in zip(self.causes, labels, strict=True):
            share = 100.0 * cause.wall_seconds / self.wall_seconds if self.wall_seconds else 0.0
            runs = str(cause.task_runs) if cause.kind != "flow" else "-"
            lines.append(
                f"{label:<{width}}  {cause.wall_seconds:9.3f} s {share:5.1f}%  "
                f"{cause.task_seconds:10.3f} s  {runs:>9}"
            )
        return lines

    def __str__(self) -> str:
        return self.render()


def _seconds(value: float) -> str:
    return f"{value:.3f} s" if value < 10 else f"{value:,.1f} s"


def _holders_table(entry: LimitHolders) -> list[str]:
    slots = f"{entry.slots} slots" if entry.slots is not None else "no slots"
    head = (
        f"while this run waited on limit {entry.limit!r} ({_seconds(entry.waited_seconds)}"
        f" of wall time, {slots}), its units were held by:"
    )
    rows: list[tuple[str, float]] = [("this run's own task runs", entry.own)]
    if entry.own > 0:
        rows.append(("  of which their bodies ran", entry.own_running))
    rows += [(f"flow run {f.run_id} ({f.flow})", f.unit_seconds) for f in entry.flows]
    rows += [(f"outside flows: {o.holder}", o.unit_seconds) for o in entry.others]
    if entry.free is not None:
        rows.append(("nobody (free: hand-off on its way, head needs more, paused)", entry.free))
    width = max(len(label) for label, _ in rows)
    lines = [head]
    for label, unit_seconds in rows:
        share = 100 * entry.share(unit_seconds)
        lines.append(f"  {label:<{width}}  {unit_seconds:10.3f} unit-s  {share:5.1f}%")
    return lines


def _cause_of(state: StateRecord) -> Key | None:
    if state.name == "Running":
        return ("running", None)
    if state.name == "Waiting":
        return ("limit", state.limit) if state.limit else ("worker", None)
    if state.name == "Retrying":
        return ("retry", None)
    if state.name == "Pending":
        return ("pending", None)
    return None  # final


@dataclass
class _Interval:
    start: float
    end: float
    cause: Key
    run: int


def explain(
    detail: FlowRunDetail,
    slots: Mapping[str, int | None] | None = None,
    spans: Sequence[HeldSpan] | None = None,
) -> WhyReport:
    """Why a recorded flow run took its time (see the module docstring).

    ``slots``: each limit's slots (None: none, or no longer defined), for the headline,
    the free units and the estimates; ``spans``: the store's record of who held those
    limits (:meth:`~sluice.store.base.Store.held_spans`), for the holders. Without
    them the report says less, never something else.
    """
    flow = detail.run
    start = flow.started_at if flow.started_at is not None else flow.created_at
    end = flow.ended_at
    if end is None:
        stamps = [s.timestamp for t in detail.task_runs for s in t.states]
        end = max([time.time(), *stamps])
    intervals, ends = _intervals(detail, end)
    _keep_critical_retries(intervals, ends)
    task_seconds: defaultdict[Key, float] = defaultdict(float)
    runs_per_cause: dict[Key, set[int]] = defaultdict(set)
    for iv in intervals:
        cause = ("retry", None) if iv.cause == ("retry-idle", None) else iv.cause
        task_seconds[cause] += iv.end - iv.start
        runs_per_cause[cause].add(iv.run)
    wall = _wall(intervals, start, end)
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
    wall_seconds = max(end - start, 0.0)
    known = dict(slots or {})
    holders: list[LimitHolders] = []
    if spans is not None:
        by_limit: defaultdict[str, list[HeldSpan]] = defaultdict(list)
        for span in spans:
            by_limit[span.limit].append(span)
        waited_on = sorted({iv.cause[1] or "" for iv in intervals if iv.cause[0] == "limit"})
        for name in waited_on:
            waiting = merge(
                (max(iv.start, start), min(iv.end, end))
                for iv in intervals
                if iv.cause == ("limit", name)
            )
            running = sum(
                overlap(waiting, iv.start, iv.end) * detail.task_runs[iv.run].run.occupy
                for iv in intervals
                if iv.cause == ("running", None) and name in detail.task_runs[iv.run].run.limits
            )
            holders.append(
                holders_of(
                    name, known.get(name), waiting, by_limit.get(name, ()), flow.id, end, running
                )
            )
    holders.sort(key=lambda h: -h.waited_seconds)
    report = WhyReport(
        flow.id,
        flow.flow,
        flow.state,
        wall_seconds,
        len(detail.task_runs),
        tuple(causes),
        holders=tuple(holders),
    )
    estimates, modelled = _estimates(detail, intervals, causes, known, start, end)
    notes: tuple[str, ...] = ()
    if spans is None and any(c.kind == "limit" for c in causes):
        notes = ("(who held the limits is not known: the store keeps no record of it)",)
    return WhyReport(
        report.run_id,
        report.flow,
        report.state,
        report.wall_seconds,
        report.task_runs,
        report.causes,
        _headline(report, known),
        report.holders,
        tuple(estimates),
        modelled,
        notes,
    )


def explain_recorded(detail: FlowRunDetail, url: str) -> WhyReport:
    """:func:`explain` with the limits' slots and the record of who held them, read from
    the store at ``url`` (the run's history store); a limit that is gone has no slots."""
    names = sorted({name for task_run in detail.task_runs for name in task_run.run.limits})
    if not names:
        return explain(detail)
    store = acquire_store(url)
    try:
        slots: dict[str, int | None] = {}
        for name in names:
            try:
                slots[name] = store.get_limit(name).slots
            except LimitNotFound:
                slots[name] = None
        flow = detail.run
        start = flow.started_at if flow.started_at is not None else flow.created_at
        until = flow.ended_at if flow.ended_at is not None else time.time()
        spans = store.held_spans(names, start, until)
    finally:
        release_store(store)
    return explain(detail, slots, spans)


def _intervals(detail: FlowRunDetail, end: float) -> tuple[list[_Interval], list[float]]:
    """Every task run's cause intervals, and when each task run ended (or ``end``)."""
    intervals: list[_Interval] = []
    ends: list[float] = []
    for index, task_run in enumerate(detail.task_runs):
        states = task_run.states
        for i, state in enumerate(states):
            cause = _cause_of(state)
            if cause is None:
                continue
            until = states[i + 1].timestamp if i + 1 < len(states) else end
            if until > state.timestamp:
                intervals.append(_Interval(state.timestamp, until, cause, index))
        ended = task_run.run.ended_at
        ends.append(ended if ended is not None else end)
    return intervals, ends


def _keep_critical_retries(intervals: list[_Interval], ends: list[float]) -> None:
    """Mark the retry delays the flow's end did not wait for ("retry-idle"): their task
    run ended before some task run that was active during the delay."""
    active = sorted((iv.start, iv.end, iv.run) for iv in intervals)
    for iv in intervals:
        if iv.cause != ("retry", None):
            continue
        mine = ends[iv.run]
        for a, b, run in active:
            if a >= iv.end:
                break
            if b > iv.start and run != iv.run and ends[run] > mine:
                iv.cause = ("retry-idle", None)
                break


_KINDS = ("worker", "limit", "retry", "running", "pending")


def _wall(intervals: list[_Interval], start: float, end: float) -> dict[Key, float]:
    """Each wall-time slice given to the cause that bounded it (see the module docstring):
    one sweep over the state changes, in time order."""
    index = {kind: i for i, kind in enumerate(_KINDS)}
    events: list[tuple[float, int, int, str | None]] = []
    for iv in intervals:
        slot = index.get(iv.cause[0])
        if iv.end > start and iv.start < end and slot is not None:
            events.append((max(iv.start, start), 1, slot, iv.cause[1]))
            events.append((min(iv.end, end), -1, slot, iv.cause[1]))
    events.sort(key=lambda e: e[0])
    counts = [0] * len(_KINDS)
    queued: dict[str, int] = {}  # task runs queued per limit
    wall: defaultdict[Key, float] = defaultdict(float)
    chosen: Key = ("flow", None)
    at = start
    i, n = 0, len(events)
    while i < n:
        t = events[i][0]
        if t > at:
            wall[chosen] += t - at
            at = t
        while i < n and events[i][0] == t:
            _, delta, slot, limit = events[i]
            counts[slot] += delta
            if limit is not None:
                queued[limit] = queued.get(limit, 0) + delta
            i += 1
        chosen = _bound(counts, queued)
    if end > at:
        wall[chosen] += end - at
    return dict(wall)


def _bound(counts: list[int], queued: dict[str, int]) -> Key:
    """The cause bounding a slice, by precedence (the module docstring)."""
    if counts[0] > 0:
        return ("worker", None)
    if counts[1] > 0:
        name = min((n for n, c in queued.items() if c > 0), key=lambda n: (-queued[n], n))
        return ("limit", name)
    for kind, count in zip(_KINDS[2:], counts[2:], strict=True):
        if count > 0:
            return (kind, None)
    return ("flow", None)


def _headline(report: WhyReport, slots: Mapping[str, int | None]) -> str:
    if not report.causes or report.wall_seconds <= 0:
        return ""
    top = report.causes[0]
    share = 100.0 * top.wall_seconds / report.wall_seconds
    runs = f"{top.task_runs:,} task run{'s' if top.task_runs != 1 else ''}"
    if top.kind == "limit":
        size = slots.get(top.limit or "")
        about = f" ({size} slots)" if size is not None else ""
        return (
            f"limit {top.limit!r}{about} bounded {share:.0f}% of this run: {runs} waited "
            f"{top.task_seconds:,.1f} task-seconds on it."
        )
    if top.kind == "worker":
        return (
            f"the runner's workers bounded {share:.0f}% of this run (worker-bound): {runs} "
            f"held their slots {top.task_seconds:,.1f} task-seconds waiting for a free worker."
        )
    if top.kind == "retry":
        return (
            f"retry delays bounded {share:.0f}% of this run: {runs} slept "
            f"{top.task_seconds:,.1f} task-seconds before trying again, and the run's end "
            "waited for them."
        )
    if top.kind == "running":
        return (
            f"the work itself bounded {share:.0f}% of this run (work-bound): for that time "
            "no task run waited on a limit, a worker or a retry delay."
        )
    if top.kind == "pending":
        return f"task runs waiting for their inputs bounded {share:.0f}% of this run."
    return f"the flow's own code bounded {share:.0f}% of this run: no task run was active."


def _estimates(
    detail: FlowRunDetail,
    intervals: list[_Interval],
    causes: list[Cause],
    slots: Mapping[str, int | None],
    start: float,
    end: float,
) -> tuple[list[Estimate], float | None]:
    """Replays of the run: as recorded, without its top limit, with enough workers."""
    limit_bound = next((c for c in causes if c.kind == "limit" and c.wall_seconds > 0), None)
    worker_bound = next((c for c in causes if c.kind == "worker" and c.wall_seconds > 0), None)
    if limit_bound is None and worker_bound is None:
        return [], None
    busy: defaultdict[int, float] = defaultdict(float)
    ready: dict[int, float] = {}
    for iv in intervals:
        if iv.cause[0] in ("running", "retry", "retry-idle"):
            busy[iv.run] += iv.end - iv.start
        if iv.cause[0] != "pending":
            ready[iv.run] = min(ready.get(iv.run, iv.start), iv.start)
    jobs = [
        Job(ready.get(i, t.run.created_at), busy[i], t.run.limits, t.run.occupy)
        for i, t in enumerate(detail.task_runs)
        if i in busy
    ]
    if not jobs:
        return [], None
    running = _peak(iv for iv in intervals if iv.cause == ("running", None))
    admitted = _peak(iv for iv in intervals if iv.cause in (("running", None), ("worker", None)))
    workers = running if worker_bound is not None else None
    capacity = {name: slots.get(name) for job in jobs for name in job.limits}
    finished = [t.run.ended_at for t in detail.task_runs if t.run.ended_at is not None]
    tail = end - max(finished, default=end)  # the flow's own code after its last task run
    modelled = estimate(jobs, start, capacity, workers) + max(tail, 0.0)
    out: list[Estimate] = []
    if limit_bound is not None and limit_bound.limit is not None:
        lifted = {**capacity, limit_bound.limit: None}
        out.append(
            Estimate(
                f"without limit {limit_bound.limit!r}",
                estimate(jobs, start, lifted, workers) + max(tail, 0.0),
            )
        )
    if worker_bound is not None and admitted > running:
        out.append(
            Estimate(
                f"with {admitted} workers instead of {running}",
                estimate(jobs, start, capacity, admitted) + max(tail, 0.0),
            )
        )
    return out, modelled


def _peak(found: Any, lasting: float = 0.005) -> int:
    """The most intervals open at once for at least ``lasting`` seconds (state changes
    recorded a moment apart make consecutive runs overlap for an instant)."""
    intervals = list(found)
    events = sorted(
        [(iv.start, 1) for iv in intervals] + [(iv.end, -1) for iv in intervals],
        key=lambda e: (e[0], e[1]),
    )
    peak = now = 0
    for i, (at, delta) in enumerate(events):
        now += delta
        until = events[i + 1][0] if i + 1 < len(events) else at
        if until - at >= lasting:
            peak = max(peak, now)
    return peak


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
