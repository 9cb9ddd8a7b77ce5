"""A progress bar (rich) on a terminal while a top-level flow runs.

Shows task runs done / submitted, how many wait and on what. Silent when
stderr is not a terminal or ``SLUICE_PROGRESS=0``; rich is imported only then.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from sluice import settings
from sluice.flows.context import FlowRun

__all__ = ["Progress", "status_line"]


def status_line(run: FlowRun) -> str:
    """What the task runs of a flow run are doing right now, in a few words."""
    with run.counts_lock:
        counts = dict(run.counts)
        waiting_on = {k: v for k, v in run.waiting_on.items() if v > 0}
    parts = []
    running = counts.get("Running", 0)
    if running:
        parts.append(f"{running} running")
    for limit, n in sorted(waiting_on.items(), key=lambda kv: (-kv[1], kv[0])):
        parts.append(f"{n} waiting on {limit!r}")
    on_workers = counts.get("Waiting", 0) - sum(waiting_on.values())
    if on_workers > 0:
        parts.append(f"{on_workers} waiting for a worker")
    if counts.get("Retrying", 0):
        parts.append(f"{counts['Retrying']} retrying")
    return ", ".join(parts)


class Progress:
    """A rich progress bar refreshed from the flow run's counters by a daemon thread."""

    def __init__(self, run: FlowRun, bar: Any, task_id: Any) -> None:
        self._run = run
        self._bar = bar
        self._task_id = task_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sluice-progress", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, run: FlowRun) -> Progress | None:
        """A progress bar for a top-level flow run on a terminal, else None."""
        if run.parent is not None or not settings.progress_enabled():
            return None
        if not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
            return None
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress
        except ImportError:  # pragma: no cover - rich is a dependency
            return None
        bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(stderr=True),
            transient=True,
        )
        task_id = bar.add_task(run.name, total=None, status="")
        bar.start()
        return cls(run, bar, task_id)

    def _update(self) -> None:
        with self._run.counts_lock:
            done = self._run.counts.get("done", 0)
            total = sum(self._run.counts.values())
        self._bar.update(
            self._task_id,
            total=total or None,
            completed=done,
            status=status_line(self._run),
        )

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._update()

    def stop(self) -> None:
        """Remove the bar."""
        self._stop.set()
        self._thread.join(1.0)
        self._update()
        self._bar.stop()
