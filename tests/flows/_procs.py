"""Module-level tasks and flows for the process tests (worker processes import them)."""

from __future__ import annotations

import os
import time
from typing import Any

from sluice import flow, task
from sluice.runners import ProcessPoolTaskRunner


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


@task(limits=["shared"])
def hold_briefly(i: int) -> int:
    time.sleep(0.05)
    return i


@flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
def in_processes() -> tuple[list[int], int]:
    squares = [f.result() for f in square.map(range(6))]
    return squares, pid_of_worker.submit().result()


def run_limited_flow(url: str, n: int, barrier: Any, out: Any) -> None:
    """In a child process: after the barrier, run a flow of ``n`` tasks on limit "shared";
    put its run id (or the error) on ``out``."""
    try:
        out.put(("ok", _limited_flow(url, n, barrier)))
    except BaseException as exc:
        out.put(("error", repr(exc)))


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
            time.sleep(0.01)
        for f in futures:
            f.result()
        return sluice.runtime.flow_run.id or ""

    return limited()
