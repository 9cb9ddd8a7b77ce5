"""Module-level tasks and flows for the process tests (worker processes import them)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from conformance._helpers import Holdings, simulate_work
from sluice import flow, task
from sluice.runners import ProcessPoolTaskRunner

HOLDINGS = Holdings()
"""What task runs of this process held on "shared" (each process has its own)."""


@task
def square(x: int) -> int:
    return x * x


@task
def pid_of_worker() -> int:
    return os.getpid()


@task
def die() -> None:
    os._exit(17)


@task(timeout_seconds=0.5)
def sleep_long() -> None:
    time.sleep(30)


@task
def fail_in_child() -> None:
    raise ValueError("from the child")


_MEETING: list[tuple[Any, Any]] = []
"""(this process's event, the other's) when two flows in two processes must overlap."""
_FIRST = threading.Lock()


@task(limits=["shared"])
def hold_briefly(i: int) -> int:
    with HOLDINGS.holding("shared"):
        if _MEETING and _FIRST.acquire(blocking=False):
            # The first holder of each process stays until the other process holds too:
            # the two flows provably hold the limit at the same time (one slot each).
            mine, other = _MEETING[0]
            mine.set()
            assert other.wait(30), "the other process's flow never held the limit"
        simulate_work(0.05)
    return i


@flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
def in_processes() -> tuple[list[int], int]:
    squares = [f.result() for f in square.map(range(6))]
    return squares, pid_of_worker.submit().result()


def run_limited_flow(url: str, n: int, barrier: Any, out: Any, meet: tuple[Any, Any]) -> None:
    """In a child process: after the barrier, run a flow of ``n`` tasks on limit "shared";
    put ("ok", its run id, HOLDINGS.records()) (or ("error", repr)) on ``out``.

    ``meet`` is (an event this process sets once one of its task runs holds the limit,
    the other process's): that first task run keeps holding until the other's is set.
    """
    _MEETING.append(meet)
    try:
        run_id = _limited_flow(url, n, barrier)
        out.put(("ok", run_id, HOLDINGS.records()))
    except BaseException as exc:
        out.put(("error", repr(exc), None))


def _limited_flow(url: str, n: int, barrier: Any) -> str:
    os.environ["SLUICE_URL"] = url
    os.environ["SLUICE_PROGRESS"] = "0"
    import sluice.runtime
    from sluice.runners import ThreadPoolTaskRunner

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=8))
    def limited() -> str:
        barrier.wait(60)  # both flows are running: now submit, interleaved with the other
        futures = []
        for i in range(n):
            futures.append(hold_briefly.submit(i))
            simulate_work(0.01)  # the pace of submissions, interleaved with the other flow
        for f in futures:
            f.result()
        return sluice.runtime.flow_run.id or ""

    return limited()
