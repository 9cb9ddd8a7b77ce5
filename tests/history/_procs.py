"""What child processes of the history tests run (spawned children import it)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from sluice import settings
from sluice.store import open_history
from sluice.store.history import FlowRunRecord, StateRecord, TaskRunRecord

FLOW_RUN = "flow-of-the-child"
DONE_TASK = "task-done"
OPEN_TASK = "task-open"


def own_runs(url: str, out: Any) -> None:
    """Write an open flow run with one ended and one running task run, then renew the
    heartbeat on time for ever, putting ("beat", alive, time) on ``out`` after each."""
    history = open_history(url)
    now = time.time()
    history.write(
        [
            FlowRunRecord(FLOW_RUN, "child", "Running", now, now, host="h", pid=os.getpid()),
            StateRecord(FLOW_RUN, FLOW_RUN, 0, "Running", now),
            TaskRunRecord(DONE_TASK, FLOW_RUN, "t", "Completed", now, now, now + 0.001),
            StateRecord(DONE_TASK, FLOW_RUN, 0, "Running", now),
            StateRecord(DONE_TASK, FLOW_RUN, 1, "Completed", now + 0.001),
            TaskRunRecord(OPEN_TASK, FLOW_RUN, "t", "Running", now, now),
            StateRecord(OPEN_TASK, FLOW_RUN, 0, "Pending", now),
            StateRecord(OPEN_TASK, FLOW_RUN, 1, "Running", now + 0.002),
        ]
    )
    every = settings.history_heartbeat()
    tick = threading.Event()
    out.put(("ready", os.getpid()))
    while True:
        out.put(("beat", history.heartbeat(), time.time()))
        tick.wait(every)  # never set: the heartbeat's period, as the flow writer keeps it
