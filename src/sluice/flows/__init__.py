"""The workflow layer: ``@flow``, ``@task``, futures and task runners, on the limits engine.

Built on :mod:`sluice.limits` through its public API only; the limits never
depend on flows.
"""

from __future__ import annotations

from sluice.flows.flow import Flow, flow
from sluice.flows.futures import DoneAndNotDone, SluiceFuture, as_completed, wait
from sluice.flows.logs import get_run_logger
from sluice.flows.runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from sluice.flows.states import State, StateName
from sluice.flows.task import Task, task, unmapped

__all__ = [
    "DoneAndNotDone",
    "Flow",
    "ProcessPoolTaskRunner",
    "SluiceFuture",
    "State",
    "StateName",
    "Task",
    "TaskRunner",
    "ThreadPoolTaskRunner",
    "as_completed",
    "flow",
    "get_run_logger",
    "task",
    "unmapped",
    "wait",
]
