"""The run-history contract: records and the :class:`HistoryStore` protocol backends implement.

Flows record what every run did — flow runs, task runs and each state a run
went through — into the same store as the limits. The flow layer never writes
on the hot path: a background writer hands batches of records to
:meth:`HistoryStore.write`. A backend stores them and answers the few reads the
CLI and ``sluice.runs`` need.

Records are frozen dataclasses of plain fields (ids are ``str``, times are
``float`` seconds since the epoch), so a backend can store them as rows, hashes
or JSON without knowing anything of flows. For one run, the records are
written by one process (the one running the flow), in order.

To add a backend: a module with a ``from_url(url) -> HistoryStore`` factory,
one entry in the table of :mod:`sluice.history`, and one entry in the table of
``tests/history/conftest.py`` so the conformance tests run against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "FlowRunDetail",
    "FlowRunRecord",
    "HistoryRecord",
    "HistoryStore",
    "StateRecord",
    "TaskRunDetail",
    "TaskRunRecord",
]


@dataclass(frozen=True)
class FlowRunRecord:
    """A flow run as last written: its identity, current state and times."""

    id: str
    flow: str
    state: str
    """The current state's name (a ``StateName`` value, e.g. ``"Running"``)."""
    created_at: float
    started_at: float | None = None
    """When the flow body first started running."""
    ended_at: float | None = None
    """When the run reached a final state (None while it runs)."""
    message: str = ""
    parent_id: str | None = None
    """The flow run that called this one, for a subflow."""
    host: str = ""
    pid: int = 0


@dataclass(frozen=True)
class TaskRunRecord:
    """A task run as last written: its identity, limits, current state and times."""

    id: str
    flow_run_id: str
    task: str
    state: str
    created_at: float
    started_at: float | None = None
    """When the task body first started running (first Running state)."""
    ended_at: float | None = None
    message: str = ""
    limits: tuple[str, ...] = ()
    occupy: int = 1
    attempts: int = 0
    """How many times the body was started (1 + retries taken)."""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class StateRecord:
    """One state a flow run or task run entered, in order (``seq`` 0, 1, 2, ... per run)."""

    run_id: str
    """The flow run or task run that entered the state."""
    flow_run_id: str
    """The flow run it belongs to (equal to ``run_id`` for a flow run's own states)."""
    seq: int
    name: str
    timestamp: float
    message: str = ""
    limit: str | None = None
    """For a Waiting state: the limit waited on (None: waiting for a free worker)."""
    position: int | None = None
    """For a Waiting state on a limit: the 1-based queue position last reported."""


HistoryRecord = FlowRunRecord | TaskRunRecord | StateRecord


@dataclass(frozen=True)
class TaskRunDetail:
    """A task run with every state it entered, in ``seq`` order."""

    run: TaskRunRecord
    states: tuple[StateRecord, ...]


@dataclass(frozen=True)
class FlowRunDetail:
    """A flow run with its own states and its task runs (ordered by ``created_at``, ``id``)."""

    run: FlowRunRecord
    states: tuple[StateRecord, ...]
    task_runs: tuple[TaskRunDetail, ...]


@runtime_checkable
class HistoryStore(Protocol):
    """Where run history is kept; one per store URL and process, used from any thread.

    Every method must be safe to call from several threads of one process, and
    several processes may write to the same store at once (each its own runs).
    Errors are :mod:`sluice.errors` exceptions (``StoreError`` for a failing
    backend, chained ``from`` the driver's exception).
    """

    url: str
    """The store URL with any password masked."""

    def write(self, batch: Sequence[HistoryRecord]) -> None:
        """Store a batch of records, in order, atomically if the backend can.

        Idempotent upserts: a :class:`FlowRunRecord` or :class:`TaskRunRecord`
        replaces any earlier record with the same ``id`` (the last one in the
        batch wins); a :class:`StateRecord` is keyed by ``(run_id, seq)`` and
        writing it again changes nothing. Writing the same batch twice leaves
        the store as writing it once. A record may arrive before the run it
        refers to (no foreign keys are enforced).
        """

    def list_flow_runs(self, limit: int = 20) -> list[FlowRunRecord]:
        """The newest ``limit`` flow runs (``limit`` >= 1), newest ``created_at`` first."""

    def get_flow_run(self, run_id: str) -> FlowRunDetail:
        """One flow run with its states and task runs; raise RunNotFound naming the id."""

    def prune(self, keep_runs: int, max_age_seconds: float | None = None) -> int:
        """Delete flow runs beyond the newest ``keep_runs``, and those created more than
        ``max_age_seconds`` ago, with their task runs and states; return how many flow
        runs were deleted. Runs that have not ended (``ended_at`` None) are kept."""

    def close(self) -> None:
        """Release connections and files; idempotent."""
