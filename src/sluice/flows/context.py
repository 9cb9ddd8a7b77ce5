"""The runs in progress: their state machines, what they record, and the current run.

A :class:`FlowRun` or :class:`TaskRun` keeps a run's states; every change is
appended to the run history (when on) as a :class:`~sluice.history.StateRecord`
plus a fresh snapshot of the run. The current flow run and task run live in
context variables, set around a flow's body and around each task body.
"""

from __future__ import annotations

import contextvars
import os
import socket
import threading
import time
import uuid
from collections import Counter

from sluice.flows.history import HistoryWriter
from sluice.flows.states import State, StateName
from sluice.store.history import FlowRunRecord, StateRecord, TaskRunRecord

__all__ = ["FlowRun", "TaskRun", "current_flow_run", "current_task_run", "new_id"]

_HOST = socket.gethostname()


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
        self._lock = threading.Lock()

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
