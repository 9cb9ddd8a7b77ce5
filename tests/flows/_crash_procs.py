"""A flow for the crash tests: run in a child process that is killed mid-run."""

from __future__ import annotations

import os
import threading
from typing import Any

from sluice import flow, task
from sluice.runners import ThreadPoolTaskRunner

_OUT: list[Any] = []
_NEVER = threading.Event()


@task
def quick() -> int:
    return 1


@task
def stuck() -> None:
    import sluice.runtime

    _OUT[0].put(("running", sluice.runtime.flow_run.id, sluice.runtime.task_run.id))
    _NEVER.wait(120)  # never set: the body runs until its process is killed


@flow(name="doomed", task_runner=ThreadPoolTaskRunner(max_workers=4))
def doomed() -> None:
    quick.submit().result()
    for future in [stuck.submit() for _ in range(2)]:
        future.result()


def run_doomed(url: str, out: Any) -> None:
    """In a child process: run ``doomed`` on ``url``; each stuck body says ("running",
    flow run id, task run id) on ``out`` and waits for ever."""
    os.environ["SLUICE_URL"] = url
    os.environ["SLUICE_PROGRESS"] = "0"
    _OUT.append(out)
    doomed()
