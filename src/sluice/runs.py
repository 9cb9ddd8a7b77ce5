"""Reading the run history: ``sluice.runs.list()``, ``get(run_id)``, ``logs(run_id)``,
``why(run_id)``.

Each reads the history kept in a store (``url``, else ``SLUICE_URL``, else the
default SQLite file), after flushing what this process has yet to write there.
"""

from __future__ import annotations

import builtins

from sluice import settings
from sluice.errors import InvalidRequest
from sluice.flows.history import writer_for
from sluice.flows.why import Cause, WhyReport, explain_recorded
from sluice.store import open_history
from sluice.store.history import FlowRunDetail, FlowRunRecord, HistoryStore, RunLogRecord

__all__ = [
    "Cause",
    "FlowRunDetail",
    "FlowRunRecord",
    "RunLogRecord",
    "WhyReport",
    "get",
    "list",
    "logs",
    "why",
]


def _history(url: str | None) -> HistoryStore:
    resolved = settings.resolve_url(url).url
    writer = writer_for(resolved) if settings.history_enabled() else None
    if writer is not None:
        writer.flush(timeout=10.0)
    return open_history(resolved)


def list(limit: int = 20, *, url: str | None = None) -> builtins.list[FlowRunRecord]:
    """The newest ``limit`` flow runs, newest first."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidRequest(f"limit must be an int >= 1, got {limit!r}")
    return _history(url).list_flow_runs(limit)


def get(run_id: str, *, url: str | None = None) -> FlowRunDetail:
    """One flow run with its states and task runs (with theirs); RunNotFound if unknown."""
    return _history(url).get_flow_run(run_id)


def logs(run_id: str, *, url: str | None = None) -> builtins.list[RunLogRecord]:
    """What a flow run and its task runs logged, in order (bounded per run, see
    ``sluice.flows.context``); RunNotFound if unknown."""
    return _history(url).get_logs(run_id)


def why(run_id: str, *, url: str | None = None) -> WhyReport:
    """What held a flow run back, who held the slots it waited for, and what would have
    helped; ``print()`` it for the report."""
    return explain_recorded(get(run_id, url=url), settings.resolve_url(url).url)
