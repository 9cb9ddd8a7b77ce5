"""Module-level tasks and flows for the Dask tests (spawned flow processes import them)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from conformance._helpers import simulate_work, simulate_work_async
from sluice import flow, task


def _scheduler() -> str:
    """The scheduler address of the client ``get_dask_client()`` gives this body."""
    from sluice.runners import get_dask_client

    scheduler = get_dask_client().scheduler
    assert scheduler is not None
    return str(scheduler.address)


@task
def where() -> tuple[int, str, str | None, str]:
    """This worker's pid, the Dask key of this body, the task run id, the client's scheduler."""
    import distributed

    import sluice.runtime

    key = distributed.get_worker().get_current_task()
    return os.getpid(), str(key), sluice.runtime.task_run.id, _scheduler()


@task
async def double_async(x: int) -> tuple[int, str]:
    """Twice ``x``, from an async body; with the client's scheduler address."""
    await simulate_work_async(0.01)
    return 2 * x, _scheduler()


@task
def numbers(n: int) -> list[int]:
    return list(range(n))


@task
def total(parts: list[Any], extra: dict[str, Any]) -> int:
    return sum(sum(p) for p in parts) + sum(sum(v) for v in extra.values())


@task(limits=["shared"])
def held(seconds: float) -> tuple[float, float, int]:
    """Hold one slot of "shared" for ``seconds``; the body's own (start, end, 1 unit)."""
    began = time.monotonic()
    simulate_work(seconds)
    return began, time.monotonic(), 1


@task(limits=["shared"])
def victim(marker: str) -> str:
    """Write this worker's pid to ``marker`` and sleep until killed; a rerun returns at once."""
    path = Path(marker)
    if path.exists():
        return "rerun"
    path.write_text(str(os.getpid()))
    simulate_work(30)  # the test kills this worker meanwhile
    return "survived"


@task(limits=["shared"], timeout_seconds=0.5)
def overstay(marker: str) -> None:
    """Work in steps for 30 s (a step is where an interrupt lands); write to ``marker``
    when interrupted."""
    try:
        for _ in range(600):
            simulate_work(0.05)
    except BaseException as exc:
        Path(marker).write_text(f"{type(exc).__name__} {time.time()}")
        raise


@task(limits=["shared"])
def stay(seconds: float) -> str:
    """Hold one slot of "shared" for ``seconds``, in interruptible steps."""
    for _ in range(int(seconds / 0.05)):
        simulate_work(0.05)
    return "stayed"


def run_shared_flow(url: str, address: str, n: int, barrier: Any, out: Any) -> None:
    """In a child process: after the barrier, run a flow of ``n`` held tasks on the
    cluster at ``address``; put the bodies' intervals (or the error) on ``out``."""
    try:
        out.put(("ok", _shared_flow(url, address, n, barrier)))
    except BaseException as exc:
        out.put(("error", repr(exc)))


def _shared_flow(url: str, address: str, n: int, barrier: Any) -> list[tuple[float, float, int]]:
    os.environ["SLUICE_URL"] = url
    os.environ["SLUICE_PROGRESS"] = "0"
    from sluice.runners import DaskTaskRunner

    @flow(task_runner=DaskTaskRunner(address=address))
    def shared() -> list[tuple[float, float, int]]:
        barrier.wait(60)  # both flows are running: now submit, interleaved with the other
        futures = []
        for _ in range(n):
            futures.append(held.submit(0.1))
            simulate_work(0.01)
        return [f.result() for f in futures]

    return shared()
