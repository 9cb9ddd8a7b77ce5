"""Flow runs and task runs as JSON-ready values: what ``sluice run`` and the dashboard print."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from sluice.flows.why import task_times
from sluice.store.history import FlowRunDetail, FlowRunRecord, RunLogRecord

__all__ = [
    "duration",
    "iso",
    "log_lines",
    "logs_json",
    "run_json",
    "show_json",
    "task_run_json",
]


def iso(moment: float | None) -> str | None:
    """A moment (seconds since the epoch) as UTC ISO 8601, or None."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, timezone.utc).isoformat()


def duration(run: FlowRunRecord) -> float | None:
    """Seconds from a flow run's start to its end (so far, while it runs)."""
    if run.started_at is None:
        return None
    return (run.ended_at if run.ended_at is not None else run.started_at) - run.started_at


def run_json(run: FlowRunRecord) -> dict[str, Any]:
    """One flow run, as ``run ls --json`` lists it."""
    return {
        "id": run.id,
        "flow": run.flow,
        "state": run.state,
        "message": run.message,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "ended_at": iso(run.ended_at),
        "duration": duration(run) if run.ended_at is not None else None,
        "parent_id": run.parent_id,
        "host": run.host,
        "pid": run.pid,
    }


def task_run_json(detail: FlowRunDetail) -> list[dict[str, Any]]:
    """Each task run of a flow run, with its waited and ran seconds and every state."""
    end = detail.run.ended_at
    out = []
    for task_run in detail.task_runs:
        t = task_run.run
        waited, ran = task_times(task_run.states, end)
        out.append(
            {
                "id": t.id,
                "task": t.task,
                "state": t.state,
                "message": t.message,
                "limits": list(t.limits),
                "occupy": t.occupy,
                "tags": list(t.tags),
                "attempts": t.attempts,
                "created_at": iso(t.created_at),
                "started_at": iso(t.started_at),
                "ended_at": iso(t.ended_at),
                "waited": waited,
                "ran": ran,
                "traceback": t.traceback,
                "states": [
                    {
                        "name": s.name,
                        "timestamp": iso(s.timestamp),
                        "message": s.message,
                        "limit": s.limit,
                        "position": s.position,
                    }
                    for s in task_run.states
                ],
            }
        )
    return out


def show_json(detail: FlowRunDetail) -> dict[str, Any]:
    """One flow run with its traceback and its task runs, as ``run show --json`` prints it."""
    return {
        **run_json(detail.run),
        "traceback": detail.run.traceback,
        "task_runs": task_run_json(detail),
    }


def logs_json(detail: FlowRunDetail, logs: list[RunLogRecord]) -> list[dict[str, Any]]:
    """A flow run's log records in order, each naming its run, as ``run logs --json`` prints."""
    tasks = {t.run.id: t.run.task for t in detail.task_runs}
    return [
        {
            "seq": r.seq,
            "timestamp": iso(r.timestamp),
            "level": logging.getLevelName(r.level),
            "levelno": r.level,
            "logger": r.logger,
            "flow_run_id": r.flow_run_id,
            "flow": detail.run.flow,
            "task_run_id": r.run_id if r.run_id != r.flow_run_id else None,
            "task": tasks.get(r.run_id),
            "message": r.message,
        }
        for r in logs
    ]


def log_lines(detail: FlowRunDetail, logs: list[RunLogRecord]) -> list[str]:
    """A flow run's log records as text lines (a record of several lines stays indented)."""
    out = []
    for r in logs_json(detail, logs):
        task_run = r["task_run_id"]
        who = f"task run {r['task']!r} {task_run[:8]}" if task_run else "flow run"
        first, *rest = str(r["message"]).splitlines() or [""]
        out.append(f"{r['timestamp']} {r['level']:<8} {who}: {first}")
        out.extend(f"    {line}" for line in rest)
    return out
