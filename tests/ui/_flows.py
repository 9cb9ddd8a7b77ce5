"""A small flow for the dashboard tests: task runs that wait on a limit, retry and fail."""

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
