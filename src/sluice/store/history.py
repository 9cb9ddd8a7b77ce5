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

**Crashed runs.** Each process's history handle is an *owner*: the flow runs it
writes that have not ended are its own. While it has such runs, its writer calls
:meth:`HistoryStore.heartbeat` every ``SLUICE_HISTORY_HEARTBEAT`` seconds (default
5). Every read (and :meth:`~HistoryStore.prune`) first ends the runs of owners that
are gone: on SQLite, as soon as the owner's process no longer holds its lock file
(the kernel drops it however the process dies); on Redis and PostgreSQL, once its
heartbeat is :data:`MISSED_BEATS` intervals old by the store's clock. Such a flow run,
its subflows and every task run of them not ended enter ``Crashed`` at the *time of
death*: when the owner's first missed heartbeat was due (its last one plus its
interval), or when a reader saw the process gone if that was earlier, never before
the run's last recorded moment. The reader writes these final records itself (in one
transaction that first checks the runs are still open), so later reads, listings and
:meth:`~HistoryStore.prune` see ordinary ended runs. An owner that was only paused
learns it was declared gone from its next heartbeat (``False``); what it does later
about those runs is not recorded.

**Logs.** :class:`RunLogRecord` holds what a run logged (its run logger, and the
warnings and errors Sluice logged about it), numbered per flow run; the flow layer
bounds how many a run keeps. A failed run keeps its traceback on its record.

To add a backend: a module with a ``from_url(url) -> HistoryStore`` factory,
one entry in the table of :mod:`sluice.history`, and one entry in the table of
``tests/history/conftest.py`` so the conformance tests run against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "MISSED_BEATS",
    "FlowRunDetail",
    "FlowRunRecord",
    "HistoryRecord",
    "HistoryStore",
    "RunLogRecord",
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
    traceback: str = ""
    """For a failed run: the traceback of the exception that ended it (bounded)."""


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
    traceback: str = ""
    """For a failed run: the traceback of the exception that ended it (bounded)."""


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


@dataclass(frozen=True)
class RunLogRecord:
    """One log record of a flow run or one of its task runs (``seq`` 0, 1, 2, ... per flow run)."""

    flow_run_id: str
    seq: int
    run_id: str
    """The flow run or task run it is about."""
    timestamp: float
    level: int
    """The ``logging`` level number (20 INFO, 30 WARNING, 40 ERROR ...)."""
    logger: str
    message: str
    """The formatted message, followed by the exception's traceback if it had one."""


HistoryRecord = FlowRunRecord | TaskRunRecord | StateRecord | RunLogRecord

MISSED_BEATS = 3
"""Heartbeat intervals without a beat after which Redis and PostgreSQL call an owner gone."""


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
        writing it again changes nothing, as a :class:`RunLogRecord` keyed by
        ``(flow_run_id, seq)``. Writing the same batch twice leaves the store as
        writing it once. A record may arrive before the run it refers to (no
        foreign keys are enforced). The flow runs written are this process's
        (their owner's heartbeat is renewed in the same transaction).
        """

    def heartbeat(self) -> bool:
        """Renew this process's heartbeat: its flow runs that have not ended are alive.

        Returns False if readers had ended this process's runs as Crashed since its
        last heartbeat (it was paused or cut off from the store for too long).
        """

    def list_flow_runs(self, limit: int = 20) -> list[FlowRunRecord]:
        """The newest ``limit`` flow runs (``limit`` >= 1), newest ``created_at`` first."""

    def get_flow_run(self, run_id: str) -> FlowRunDetail:
        """One flow run with its states and task runs; raise RunNotFound naming the id."""

    def get_logs(self, run_id: str) -> list[RunLogRecord]:
        """A flow run's log records (its own and its task runs'), in ``seq`` order;
        raise RunNotFound naming the id."""

    def prune(self, keep_runs: int, max_age_seconds: float | None = None) -> int:
        """Delete flow runs beyond the newest ``keep_runs``, and those created more than
        ``max_age_seconds`` ago, with their task runs, states and logs; return how many
        flow runs were deleted. Runs that have not ended (``ended_at`` None) are kept."""

    def close(self) -> None:
        """Release connections and files; idempotent."""
