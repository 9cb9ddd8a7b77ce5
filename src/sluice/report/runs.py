"""Flow runs and task runs as JSON-ready values: what ``sluice run`` and the dashboard print."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sluice.flows.why import task_times
from sluice.store.history import FlowRunDetail, FlowRunRecord

__all__ = ["duration", "iso", "run_json", "task_run_json"]


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
