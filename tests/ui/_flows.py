"""Flows for the dashboard tests: a small one whose task runs wait on a limit, retry and
fail; one of 1,200 task runs."""

from __future__ import annotations

from conformance._helpers import simulate_work
from sluice import flow, task, wait
from sluice.runners import ThreadPoolTaskRunner

LIMIT = "ui-db"
TASK_RUNS = 5


@task(limits=[LIMIT], retries=1, retry_delay_seconds=0.05)
def step(i: int) -> int:
    """Sleeps a little; task run 3 always fails (after one retry)."""
    simulate_work(0.05)
    if i == 3:
        raise ValueError(f"page {i} is bad")
    return i


@flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
def pipeline() -> None:
    """TASK_RUNS task runs on a one-slot limit: each but the first waits on it."""
    wait([step.submit(i) for i in range(TASK_RUNS)])


MANY_LIMIT = "ui-many"
MANY_TASK_RUNS = 1200
MANY_TASKS = ("fetch_page", "parse_page", "store_page")


@task(limits=[MANY_LIMIT])
def fetch_page(i: int) -> int:
    """Holds a slot of MANY_LIMIT a little."""
    simulate_work(0.002)
    return i


@task(limits=[MANY_LIMIT])
def parse_page(i: int) -> int:
    """Holds a slot of MANY_LIMIT briefly."""
    return i


@task
def store_page(i: int) -> int:
    """Takes no limit."""
    return i


@flow(task_runner=ThreadPoolTaskRunner(max_workers=16))
def many() -> None:
    """MANY_TASK_RUNS task runs of three tasks, two of them queued on MANY_LIMIT."""
    wait(
        [
            task_.submit(i)
            for i in range(MANY_TASK_RUNS // len(MANY_TASKS))
            for task_ in (fetch_page, parse_page, store_page)
        ]
    )
