"""The dashboard's JSON documents: limits with their trend, flow runs with Gantt bars and waits.

Limits reuse the ``sluice limit ls/inspect --json`` shapes and runs the
``sluice run ls/show/why --json`` shapes (docs/cli.md), with what a page adds.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final

from sluice import runs
from sluice.errors import RunNotFound
from sluice.flows.why import explain, explain_recorded
from sluice.limits.model import LimitStatus
from sluice.report.limits import status_json, summary_json
from sluice.report.run_query import RunFilter, find_runs, resolve_run_id
from sluice.report.runs import run_json, task_run_json
from sluice.report.sampler import Point, Sample
from sluice.store.history import FlowRunDetail, FlowRunRecord, StateRecord

__all__ = [
    "RunIndex",
    "flow_run_of",
    "gantt_segments",
    "limit_json",
    "limits_json",
    "run_detail_json",
    "task_run_of",
]

_HOLDER_TASK: Final = re.compile(r"task .* run ([0-9a-f]{32})")
_HOLDER_FLOW: Final = re.compile(r"task .* in flow .* run ([0-9a-f]{32})")
_FAILED_NEXT: Final = {"Retrying", "Failed", "Crashed", "TimedOut", "Cancelled"}
_WAIT_CAUSES: Final = ("limit", "worker", "retry", "pending")


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).isoformat()


def task_run_of(holder: str) -> str | None:
    """The task run id of a direct call's holder label (``task NAME run ID``), if it is one."""
    if _HOLDER_FLOW.fullmatch(holder):
        return None
    match = _HOLDER_TASK.fullmatch(holder)
    return match.group(1) if match else None


def flow_run_of(holder: str) -> str | None:
    """The flow run id of a flow's task runs' holder label (``task NAME in flow FLOW run ID``)."""
    match = _HOLDER_FLOW.fullmatch(holder)
    return match.group(1) if match else None


def limits_json(
    sample: Sample, delivered: Callable[[str], float | None] = lambda name: None
) -> dict[str, Any]:
    """``GET /api/limits``: every limit as ``limit ls --json`` has it, plus the next token,
    its grants so far and the rate they were delivered at over the last minute."""
    return {
        "sampled_at": _iso(sample.at),
        "error": sample.error,
        "limits": [
            {
                **summary_json(s),
                "next_token_in": s.next_token_in,
                "waiting_units": sum(w.count * w.occupy for w in s.waiters),
                "grants": s.totals.grants,
                "delivered_rate": delivered(s.limit.name),
            }
            for s in sample.statuses
        ],
    }


def limit_json(
    status: LimitStatus, points: list[Point], sample: Sample, delivered_rate: float | None = None
) -> dict[str, Any]:
    """``GET /api/limits/NAME``: ``limit inspect --json`` plus task runs, the trend and the
    delivered rate over the last minute."""
    data = status_json(status)
    data["delivered_rate"] = delivered_rate
    for holder in data["holders"]:
        holder["task_run_id"] = task_run_of(holder["holder"])
        holder["flow_run_id"] = flow_run_of(holder["holder"])
    for waiter in data["waiters"]:
        waiter["task_run_id"] = task_run_of(waiter["holder"])
        waiter["flow_run_id"] = flow_run_of(waiter["holder"])
    data["sampled_at"] = _iso(sample.at)
    data["history"] = [{"at": p.at, "in_use": p.in_use, "waiting": p.waiting} for p in points]
    return data


def gantt_segments(
    states: tuple[StateRecord, ...], origin: float, end: float
) -> list[dict[str, Any]]:
    """A task run's life as bars from ``origin`` (seconds): one per state until the next.

    ``kind`` is ``pending``, ``limit`` (waiting on ``limit`` at ``position``),
    ``worker``, ``running``, ``failed`` (a run of the body that ended in failure,
    a retry, a timeout or a crash) or ``retry`` (the retry delay).
    """
    segments = []
    for i, state in enumerate(states):
        following = states[i + 1] if i + 1 < len(states) else None
        until = following.timestamp if following is not None else end
        if state.name == "Running":
            failed = following is not None and following.name in _FAILED_NEXT
            kind = "failed" if failed else "running"
        elif state.name == "Waiting":
            kind = "limit" if state.limit else "worker"
        elif state.name == "Retrying":
            kind = "retry"
        elif state.name == "Pending":
            kind = "pending"
        else:
            continue  # a final state is a moment, not a span
        segments.append(
            {
                "kind": kind,
                "state": state.name,
                "start": max(state.timestamp - origin, 0.0),
                "end": max(until - origin, 0.0),
                "limit": state.limit,
                "position": state.position,
                "message": state.message,
                "ended_by": following.name if following is not None else None,
            }
        )
    return segments


def _end_of(detail: FlowRunDetail) -> float:
    if detail.run.ended_at is not None:
        return detail.run.ended_at
    stamps = [s.timestamp for t in detail.task_runs for s in t.states]
    return max([time.time(), *stamps])


def run_detail_json(detail: FlowRunDetail, url: str | None = None) -> dict[str, Any]:
    """``GET /api/runs/ID``: ``run show --json``, each task run's bars, and ``run why``."""
    run = detail.run
    origin = min(
        [run.created_at, *(t.run.created_at for t in detail.task_runs)],
    )
    end = _end_of(detail)
    tasks = task_run_json(detail)
    for data, task_run in zip(tasks, detail.task_runs, strict=True):
        data["segments"] = gantt_segments(task_run.states, origin, end)
    report = explain_recorded(detail, url) if url is not None else explain(detail)
    return {
        **run_json(run),
        "origin": _iso(origin),
        "span": max(end - origin, 0.0),
        "task_runs": tasks,
        "why": report.to_dict(),
        "why_text": report.render(),
    }


@dataclass(frozen=True)
class RunSummary:
    """What the runs page shows of one flow run beyond ``run ls``: how long it waited."""

    wait_seconds: float
    """Wall time in which task runs waited and none ran (limits, workers, retries, pending)."""
    task_wait_seconds: float
    """Task-seconds waited, summed over the task runs."""
    task_runs: int


class RunIndex:
    """Reads of the run history the pages need, with ended runs' summaries cached."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._summaries: dict[str, RunSummary] = {}
        self._flow_of_task: dict[str, str] = {}

    def detail(self, run_id: str) -> FlowRunDetail:
        """One flow run; RunNotFound if the history has none with this id."""
        detail = runs.get(run_id, url=self.url)
        with self._lock:
            for task_run in detail.task_runs:
                self._flow_of_task[task_run.run.id] = run_id
        return detail

    def summary(self, run: FlowRunRecord) -> RunSummary:
        """How long a flow run waited; computed once for an ended run."""
        with self._lock:
            cached = self._summaries.get(run.id)
        if cached is not None:
            return cached
        report = explain(self.detail(run.id))
        summary = RunSummary(
            sum(c.wall_seconds for c in report.causes if c.kind in _WAIT_CAUSES),
            sum(c.task_seconds for c in report.causes if c.kind in _WAIT_CAUSES),
            report.task_runs,
        )
        if run.ended_at is not None:
            with self._lock:
                self._summaries[run.id] = summary
        return summary

    def resolve(self, text: str) -> str:
        """The id of the flow run whose id is ``text`` or starts with it (4+ hex digits);
        RunNotFound if none, AmbiguousRunId (naming the candidates) if several."""
        return resolve_run_id(text, url=self.url)

    def list_json(self, count: int, where: RunFilter | None = None) -> list[dict[str, Any]]:
        """``GET /api/runs``: the newest runs that pass ``where`` as ``run ls --json`` has
        them, and their waits."""
        out = []
        for run in find_runs(count, where, url=self.url):
            try:
                summary = self.summary(run)
            except RunNotFound:
                continue  # pruned since it was listed
            duration = (
                (run.ended_at if run.ended_at is not None else time.time()) - run.started_at
                if run.started_at is not None
                else None
            )
            out.append(
                {
                    **run_json(run),
                    "elapsed": duration,
                    "wait_seconds": summary.wait_seconds,
                    "task_wait_seconds": summary.task_wait_seconds,
                    "task_runs": summary.task_runs,
                }
            )
        return out

    def flow_run_of(self, task_run_id: str, search: int = 100) -> str | None:
        """The flow run a task run belongs to, looked up among the newest ``search`` runs."""
        with self._lock:
            found = self._flow_of_task.get(task_run_id)
        if found is not None:
            return found
        for run in runs.list(search, url=self.url):
            try:
                detail = self.detail(run.id)
            except RunNotFound:
                continue
            if any(t.run.id == task_run_id for t in detail.task_runs):
                return run.id
        return None
