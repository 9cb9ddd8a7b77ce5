"""One execution of a task body, and how a worker thread runs it so it can be interrupted.

A sync body on a thread can only be interrupted cooperatively: the engine asks
CPython to raise an exception in that thread (``PyThreadState_SetAsyncExc``),
which happens at the thread's next Python instruction. A blocking call in C
(``time.sleep``, a socket read, a long C-extension call) runs to its end first,
and a body that catches ``BaseException`` can swallow it. Async bodies are
cancelled; bodies in worker processes are killed. The engine interrupts a body when its
task run's time is up, when the run is cancelled, and when its lease is lost
(a reset revoked it, or it expired).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from sluice.flows import context
from sluice.flows.context import TaskRun

__all__ = ["Interrupted", "Job", "Outcome", "run_async_body", "run_sync_body"]

Kind = Literal["ok", "error", "crashed", "interrupted"]


@dataclass(frozen=True)
class Outcome:
    """How a body ended: returned a value, raised, crashed its worker, or was interrupted."""

    kind: Kind
    value: Any = None


class Interrupted(BaseException):
    """Raised inside a sync task body to stop it (timeout or cancellation); never escapes."""


@dataclass
class Job:
    """A task body to run once, with what is needed to interrupt it."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    is_async: bool
    task_run: TaskRun
    task: Any = None
    """The Task the body belongs to (pickled by reference for worker processes)."""
    outcome: cf.Future[Outcome] = field(default_factory=cf.Future)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread_id: int | None = None
    running: bool = False
    stop_requested: bool = False
    async_task: asyncio.Task[Any] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    on_interrupt: Callable[[], None] | None = None
    """Set by a runner that stops a job its own way (e.g. by killing a worker process)."""

    def finish(self, outcome: Outcome) -> None:
        """Report how the body ended (first report wins)."""
        if not self.outcome.done():
            self.outcome.set_result(outcome)

    def interrupt(self) -> None:
        """Stop the body as far as its kind allows (see the module docstring).

        Does nothing once the body has ended: its worker may run another by then.
        """
        with self.lock:
            if self.stop_requested or self.outcome.done():
                return
            self.stop_requested = True
            if self.on_interrupt is not None:
                self.on_interrupt()
            elif self.async_task is not None and self.loop is not None:
                self.loop.call_soon_threadsafe(self.async_task.cancel)
            elif self.running and self.thread_id is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.thread_id), ctypes.py_object(Interrupted)
                )


def _clear_pending(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


def run_sync_body(job: Job) -> None:
    """Run a sync body in this thread, as the job's task run; report its outcome."""
    outcome: Outcome
    tokens = context.enter(job.task_run.flow_run, job.task_run)
    try:
        try:
            with job.lock:
                if job.stop_requested:
                    raise Interrupted
                job.thread_id = threading.get_ident()
                job.running = True
            try:
                if job.is_async:
                    outcome = Outcome("ok", asyncio.run(job.fn(*job.args, **job.kwargs)))
                else:
                    outcome = Outcome("ok", job.fn(*job.args, **job.kwargs))
            except Interrupted:
                outcome = Outcome("interrupted")
            except BaseException as exc:
                outcome = Outcome("error", exc)
        except Interrupted:
            outcome = Outcome("interrupted")
        # An interrupt sent but not yet delivered must not hit code after the body.
        try:
            with job.lock:
                job.running = False
                if job.stop_requested and job.thread_id is not None:
                    _clear_pending(job.thread_id)
        except Interrupted:
            job.running = False
    finally:
        context.leave(tokens)
    job.finish(outcome)


async def run_async_body(job: Job) -> None:
    """Run an async body as a task of the running loop; report its outcome."""
    tokens = context.enter(job.task_run.flow_run, job.task_run)
    try:
        with job.lock:
            stop = job.stop_requested
            job.loop = asyncio.get_running_loop()
            job.async_task = asyncio.current_task()
        if stop:
            outcome = Outcome("interrupted")
        else:
            try:
                outcome = Outcome("ok", await job.fn(*job.args, **job.kwargs))
            except asyncio.CancelledError:
                outcome = Outcome("interrupted")
            except BaseException as exc:
                outcome = Outcome("error", exc)
    finally:
        context.leave(tokens)
    job.finish(outcome)


class Deadline:
    """Interrupt the calling thread's code after ``seconds`` (see the module docstring)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.fired = False
        self._armed = False
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._thread_id = threading.get_ident()

    def __enter__(self) -> Deadline:
        if self.seconds is not None:
            self._armed = True
            self._timer = threading.Timer(self.seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _fire(self) -> None:
        with self._lock:
            if self._armed:
                self.fired = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._thread_id), ctypes.py_object(Interrupted)
                )

    def disarm(self) -> None:
        """Stop the timer; drop an interrupt sent but not yet delivered."""
        if self._timer is None:
            return
        try:
            with self._lock:
                self._armed = False
                self._timer.cancel()
                if self.fired:
                    _clear_pending(self._thread_id)
        except Interrupted:
            self._armed = False

    def __exit__(self, *exc: object) -> None:
        self.disarm()
