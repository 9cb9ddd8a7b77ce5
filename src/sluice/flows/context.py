"""The runs in progress: their state machines, what they record, and the current run.

A :class:`FlowRun` or :class:`TaskRun` keeps a run's states; every change is
appended to the run history (when on) as a :class:`~sluice.history.StateRecord`
plus a fresh snapshot of the run. The current flow run and task run live in
context variables, set around a flow's body and around each task body.

A failed run keeps its exception's traceback (:meth:`_Run.record_error`), and a
flow run records the log records about it and its task runs
(:meth:`FlowRun.add_log`, fed by :mod:`sluice.flows.logs`), within these bounds:
each run (a flow run's own records, or one task run's) keeps its first
:data:`LOG_RECORDS_PER_RUN` records and :data:`LOG_BYTES_PER_RUN` bytes of text; a
flow run with all its task runs keeps at most :data:`LOG_RECORDS_PER_FLOW_RUN`
records and :data:`LOG_BYTES_PER_FLOW_RUN` bytes. A run that reaches a bound gets
one note saying so; a traceback keeps its first and last lines, at most
:data:`TRACEBACK_BYTES` in all.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import time
import traceback
import uuid
import weakref
from collections import Counter

from sluice.flows.history import HistoryWriter
from sluice.flows.states import State, StateName
from sluice.store.history import FlowRunRecord, RunLogRecord, StateRecord, TaskRunRecord

__all__ = [
    "LOG_BYTES_PER_FLOW_RUN",
    "LOG_BYTES_PER_RUN",
    "LOG_RECORDS_PER_FLOW_RUN",
    "LOG_RECORDS_PER_RUN",
    "START_WRITE_TIMEOUT",
    "TRACEBACK_BYTES",
    "FlowRun",
    "TaskRun",
    "current_flow_run",
    "current_task_run",
    "flow_run_by_id",
    "new_id",
]

_HOST = socket.gethostname()

LOG_RECORDS_PER_RUN = 200
"""Log records kept per run (a flow run's own, or one task run's): the first ones."""
LOG_BYTES_PER_RUN = 64 * 1024
"""Bytes of log text kept per run."""
LOG_RECORDS_PER_FLOW_RUN = 10_000
"""Log records kept per flow run, its task runs' included."""
LOG_BYTES_PER_FLOW_RUN = 4 * 1024 * 1024
"""Bytes of log text kept per flow run, its task runs' included."""
TRACEBACK_BYTES = 32 * 1024
"""Bytes of a traceback kept: its first quarter and its end."""
START_WRITE_TIMEOUT = 10.0
"""Seconds a flow run waits, as it starts running, for its record to be written."""


def bounded_traceback(exc: BaseException) -> str:
    """``exc`` with its traceback as ``traceback`` prints it, cut to TRACEBACK_BYTES."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return _cut(text, TRACEBACK_BYTES)


def _cut(text: str, limit: int) -> str:
    """``text`` within about ``limit`` bytes: its start and its end, the middle said cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    head, tail = limit // 4, limit - limit // 4
    cut = len(data) - head - tail
    return (
        data[:head].decode("utf-8", "ignore")
        + f"\n[... {cut} bytes cut ...]\n"
        + data[-tail:].decode("utf-8", "ignore")
    )


def new_id() -> str:
    """A fresh run id (32 hex digits)."""
    return uuid.uuid4().hex


class _Run:
    """What flow runs and task runs share: an id, states in order, and recording."""

    def __init__(self, run_id: str, name: str, writer: HistoryWriter | None) -> None:
        self.id = run_id
        self.name = name
        self.writer = writer
        self.created_at = time.time()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.states: list[State] = []
        self.traceback = ""
        """The traceback of the exception that failed the run (bounded), if any."""
        self._lock = threading.Lock()

    def record_error(self, exc: BaseException) -> None:
        """Keep the traceback of the exception that is failing the run."""
        self.traceback = bounded_traceback(exc)

    @property
    def state(self) -> State:
        """The current state."""
        return self.states[-1]

    def set_state(self, state: State) -> State:
        """Enter a state and record it; a final state is never left."""
        with self._lock:
            if self.states and self.states[-1].is_final:
                return self.states[-1]
            seq = len(self.states)
            self.states.append(state)
            if state.name is StateName.RUNNING and self.started_at is None:
                self.started_at = state.timestamp
            if state.is_final:
                self.ended_at = state.timestamp
            self._changed(state)
            if self.writer is not None:
                self.writer.put(
                    StateRecord(
                        self.id,
                        self.flow_run_id,
                        seq,
                        state.name.value,
                        state.timestamp,
                        state.message,
                        state.limit,
                        state.position,
                    )
                )
                self.writer.touch(self)
        return state

    @property
    def flow_run_id(self) -> str:
        raise NotImplementedError

    def record(self) -> FlowRunRecord | TaskRunRecord:
        raise NotImplementedError

    def _changed(self, state: State) -> None:
        """Hook called under the lock after each state change."""


class FlowRun(_Run):
    """A flow run in progress: its store, its parent flow run, and progress counters.

    What executes its task runs (runner, dispatcher, futures) is kept apart, by
    :mod:`sluice.flows.dispatch`.
    """

    def __init__(
        self, name: str, writer: HistoryWriter | None, url: str, parent: FlowRun | None
    ) -> None:
        super().__init__(new_id(), name, writer)
        self.url = url
        self.parent = parent
        self.counts: Counter[str] = Counter()  # task runs per progress bucket
        self.waiting_on: Counter[str] = Counter()  # task runs waiting, per limit
        self.counts_lock = threading.Lock()
        self._logs = _LogBudget()
        _flow_runs[self.id] = self

    def set_state(self, state: State) -> State:
        """Enter a state and record it; the first Running state is written before this returns.

        So a flow run is in the store, Running, before its body starts: if its process
        dies at any later moment, readers find the run and end it as Crashed.
        """
        starts = self.started_at is None and state.name is StateName.RUNNING
        state = super().set_state(state)
        if starts and self.writer is not None:
            self.writer.flush(START_WRITE_TIMEOUT)
        return state

    def add_log(self, run_id: str, level: int, logger: str, message: str, at: float) -> None:
        """Record a log record about this flow run or one of its task runs, within bounds."""
        if self.writer is None:
            return
        for record in self._logs.admit(self.id, run_id, level, logger, message, at):
            self.writer.put(record)

    @property
    def flow_run_id(self) -> str:
        return self.id

    def record(self) -> FlowRunRecord:
        state = self.states[-1]
        return FlowRunRecord(
            self.id,
            self.name,
            state.name.value,
            self.created_at,
            self.started_at,
            self.ended_at,
            state.message,
            self.parent.id if self.parent is not None else None,
            _HOST,
            os.getpid(),
            self.traceback,
        )


class TaskRun(_Run):
    """A task run in progress; state changes also update its flow run's progress counters."""

    def __init__(
        self,
        name: str,
        flow_run: FlowRun | None,
        limits: tuple[str, ...],
        occupy: int,
        tags: tuple[str, ...],
    ) -> None:
        super().__init__(new_id(), name, flow_run.writer if flow_run is not None else None)
        self.flow_run = flow_run
        self.limits = limits
        self.occupy = occupy
        self.tags = tags
        self.attempts = 0
        self._bucket: str | None = None
        self._limit: str | None = None

    @property
    def flow_run_id(self) -> str:
        return self.flow_run.id if self.flow_run is not None else ""

    @property
    def holder(self) -> str:
        """The holder label of this run's leases, as ``inspect()`` shows them.

        In a flow run it names the task and the flow run (``task NAME in flow FLOW run
        ID``), the same for every run of one task in one flow run: those wait in line
        together, on one store ticket, however many they are. A direct call outside
        a flow names the task run itself (``task NAME run ID``).
        """
        flow = self.flow_run
        if flow is None:
            return f"task {self.name[:160]} run {self.id}"
        return f"task {self.name[:100]} in flow {flow.name[:100]} run {flow.id}"

    def record(self) -> TaskRunRecord:
        state = self.states[-1]
        return TaskRunRecord(
            self.id,
            self.flow_run_id,
            self.name,
            state.name.value,
            self.created_at,
            self.started_at,
            self.ended_at,
            state.message,
            self.limits,
            self.occupy,
            self.attempts,
            self.tags,
            self.traceback,
        )

    def _changed(self, state: State) -> None:
        flow = self.flow_run
        if flow is None:
            return
        bucket = "done" if state.is_final else state.name.value
        limit = state.limit if state.name is StateName.WAITING else None
        with flow.counts_lock:
            if self._bucket is not None:
                flow.counts[self._bucket] -= 1
            flow.counts[bucket] += 1
            if self._limit is not None:
                flow.waiting_on[self._limit] -= 1
            if limit is not None:
                flow.waiting_on[limit] += 1
        self._bucket, self._limit = bucket, limit


class _LogBudget:
    """What one flow run may still record of its logs: counts per run and in all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._records = 0
        self._bytes = 0
        self._per_run: dict[str, list[int]] = {}  # run id -> [records, bytes]
        self._full: set[str] = set()  # runs (and "" for the flow run's total) told so

    def admit(
        self, flow_run_id: str, run_id: str, level: int, logger: str, message: str, at: float
    ) -> list[RunLogRecord]:
        """The records to write for one log record: it (maybe cut), a note, or nothing."""
        size = len(message.encode("utf-8", "replace"))
        with self._lock:
            used = self._per_run.setdefault(run_id, [0, 0])
            run_room = LOG_RECORDS_PER_RUN - used[0], LOG_BYTES_PER_RUN - used[1]
            all_room = (
                LOG_RECORDS_PER_FLOW_RUN - self._records,
                LOG_BYTES_PER_FLOW_RUN - self._bytes,
            )
            if run_room[0] > 0 and run_room[1] > 0 and all_room[0] > 0 and all_room[1] > 0:
                room = min(run_room[1], all_room[1])
                if size > room:
                    message = _cut(message, room)
                    size = min(size, room)
                used[0] += 1
                used[1] += size
                self._records += 1
                self._bytes += size
                return [self._record(flow_run_id, run_id, at, level, logger, message)]
            whole = all_room[0] <= 0 or all_room[1] <= 0
            key = "" if whole else run_id
            if key in self._full:
                return []
            self._full.add(key)
            if whole:
                note = (
                    "log bound reached: no more records of this flow run or its task runs are"
                    f" stored (at most {LOG_RECORDS_PER_FLOW_RUN} records and"
                    f" {LOG_BYTES_PER_FLOW_RUN // 1024} KiB per flow run)"
                )
            else:
                note = (
                    "log bound reached: no more records of this run are stored (its first"
                    f" {LOG_RECORDS_PER_RUN} records and {LOG_BYTES_PER_RUN // 1024} KiB)"
                )
            return [self._record(flow_run_id, run_id, at, logging.WARNING, "sluice.runs", note)]

    def _record(
        self, flow_run_id: str, run_id: str, at: float, level: int, logger: str, message: str
    ) -> RunLogRecord:
        self._seq += 1
        return RunLogRecord(flow_run_id, self._seq - 1, run_id, at, level, logger, message)


_flow_runs: weakref.WeakValueDictionary[str, FlowRun] = weakref.WeakValueDictionary()


def flow_run_by_id(run_id: str) -> FlowRun | None:
    """The flow run of this process with this id, while something still holds it."""
    return _flow_runs.get(run_id)


_flow_run: contextvars.ContextVar[FlowRun | None] = contextvars.ContextVar(
    "sluice_flow_run", default=None
)
_task_run: contextvars.ContextVar[TaskRun | None] = contextvars.ContextVar(
    "sluice_task_run", default=None
)


def current_flow_run() -> FlowRun | None:
    """The flow run whose code is running in this context, if any."""
    return _flow_run.get()


def current_task_run() -> TaskRun | None:
    """The task run whose body is running in this context, if any."""
    return _task_run.get()


def enter(flow_run: FlowRun | None, task_run: TaskRun | None) -> tuple[object, object]:
    """Make these the current runs; returns tokens for :func:`leave`."""
    return _flow_run.set(flow_run), _task_run.set(task_run)


def leave(tokens: tuple[object, object]) -> None:
    """Restore the runs current before :func:`enter`."""
    flow_token, task_token = tokens
    _task_run.reset(task_token)  # type: ignore[arg-type]
    _flow_run.reset(flow_token)  # type: ignore[arg-type]


RemoteIds = tuple[str, str, str, str]
"""(flow run id, flow name, task run id, task name), for a body in a worker process."""

_remote: contextvars.ContextVar[RemoteIds | None] = contextvars.ContextVar(
    "sluice_remote_run", default=None
)


def remote_ids(task_run: TaskRun) -> RemoteIds:
    """The ids a worker process needs to answer ``sluice.runtime`` for a task run."""
    flow = task_run.flow_run
    return (
        flow.id if flow else "",
        flow.name if flow else "",
        task_run.id,
        task_run.name,
    )


def enter_remote(ids: RemoteIds) -> object:
    """In a worker process: make ``sluice.runtime`` report these runs."""
    return _remote.set(ids)


def leave_remote(token: object) -> None:
    """Undo :func:`enter_remote`."""
    _remote.reset(token)  # type: ignore[arg-type]


def current_remote() -> RemoteIds | None:
    """The runs of the body running in this worker process, if any."""
    return _remote.get()
