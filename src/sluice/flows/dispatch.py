"""Where task runs are admitted: one dispatcher per flow run, and the one way in, :func:`admit`.

A :class:`Dispatcher` is a thread running an asyncio loop; every task run it
admits is one coroutine on it (:func:`sluice.flows.engine.drive`). A flow run's
:class:`Execution` is its task runner, its dispatcher, the executor that hands
granted bodies to the runner's workers, and the futures it submitted; it is
kept here, by flow run, so the run record itself holds no machinery. Direct
calls of a task (``my_task(...)``) outside a flow use one dispatcher per store
URL for the process, and the caller runs the body itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import inspect
import logging
import queue
import threading
import time
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import sluice.limits.aio
from sluice import _loops, settings
from sluice.flows.context import FlowRun, TaskRun
from sluice.flows.engine import Executor, TaskSpec, drive
from sluice.flows.futures import SluiceFuture
from sluice.flows.jobs import Job, Outcome, run_async_body, run_sync_body
from sluice.flows.runners import GRANTED_WORKERS_MAX, TaskRunner
from sluice.flows.states import State, StateName

__all__ = [
    "CallerLoop",
    "CallerThread",
    "Dispatcher",
    "Execution",
    "PoolExecutor",
    "admit",
    "execution_of",
    "start_execution",
]

log = logging.getLogger("sluice.flows")


class PoolExecutor:
    """Bodies on the runner's workers: at most ``max_workers`` at once, beyond which a
    growing runner starts task runs that hold their limits at once anyway."""

    def __init__(self, runner: TaskRunner, dispatcher: Dispatcher, run: FlowRun) -> None:
        self._runner = runner
        self._dispatcher = dispatcher
        self._run = run
        self._free: asyncio.Semaphore | None = None
        self._granted: asyncio.Semaphore | None = None
        self._checked: set[str] = set()
        self._running: set[cf.Future[Outcome]] = set()
        self._running_lock = threading.Lock()

    async def execute(self, job: Job) -> None:
        if self._free is None:
            self._free = asyncio.Semaphore(self._runner.max_workers)
            self._granted = asyncio.Semaphore(GRANTED_WORKERS_MAX)
        holds = bool(job.task_run.limits)
        free = self._granted if holds and self._runner.grows else self._free
        assert free is not None
        if free.locked():
            job.task_run.set_state(
                State(
                    StateName.WAITING,
                    message=f"waiting for a free worker ({self._runner!r})",
                )
            )
            if holds:
                self._warn_idle_slots(job.task_run.limits)
        await free.acquire()
        loop = asyncio.get_running_loop()
        # The worker is free again when the body really ends, even after a timeout.
        job.outcome.add_done_callback(lambda _: _loops.post(loop, free.release))
        with self._running_lock:
            self._running.add(job.outcome)
        job.outcome.add_done_callback(self._ended)
        if not self._runner.reports_running:
            job.task_run.set_state(State(StateName.RUNNING))
        self._runner.run(job)

    def _ended(self, outcome: cf.Future[Outcome]) -> None:
        with self._running_lock:
            self._running.discard(outcome)

    def bodies_running(self) -> list[cf.Future[Outcome]]:
        """The outcomes of the bodies handed to the runner that have not ended yet."""
        with self._running_lock:
            return list(self._running)

    async def argument(self, future: SluiceFuture[Any]) -> Any:
        """What a body on the runner is given for a future among its arguments."""
        return await self._runner.argument(future)

    def _warn_idle_slots(self, names: tuple[str, ...]) -> None:
        """Once per flow run and limit: granted slots wait for workers (the max_workers trap)."""
        unchecked = [n for n in names if n not in self._checked]
        if not unchecked:
            return
        self._checked.update(unchecked)
        self._dispatcher.spawn(self._check_slots(unchecked))

    async def _check_slots(self, names: list[str]) -> None:
        workers = self._runner.max_workers
        for name in names:
            try:
                limit = await self._dispatcher.limits().get(name)
            except Exception:  # a warning is never worth failing a flow
                continue
            if limit.slots is not None and limit.slots > workers:
                log.warning(
                    "flow run %s (%s): task runs holding slots of limit %r (%d slots) wait "
                    "for a free worker: %r runs at most %d task bodies at once, so at most "
                    "%d of those %d slots are ever used by this flow run (the max_workers "
                    "trap). Give the runner max_workers=%d or more, or leave max_workers "
                    "unset: the default runner starts task runs that hold their limits at once.",
                    self._run.name,
                    self._run.id,
                    name,
                    limit.slots,
                    self._runner,
                    workers,
                    workers,
                    limit.slots,
                    limit.slots,
                )


class CallerThread:
    """Bodies run by the thread that called the task, which waits on :meth:`serve`."""

    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()

    async def execute(self, job: Job) -> None:
        job.task_run.set_state(State(StateName.RUNNING))
        self._inbox.put(job)

    async def argument(self, future: SluiceFuture[Any]) -> Any:
        """A future among the arguments -> its result."""
        return await future

    def serve(self, done: cf.Future[Any]) -> None:
        """In the calling thread: run the bodies handed over until the run ends."""
        done.add_done_callback(lambda _: self._inbox.put(None))
        while True:
            job = self._inbox.get()
            if job is None:
                return
            run_sync_body(job)


class CallerLoop:
    """Bodies run as tasks of the calling coroutine's event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._inbox: asyncio.Queue[Job | None] = asyncio.Queue()

    async def execute(self, job: Job) -> None:
        job.task_run.set_state(State(StateName.RUNNING))
        self._loop.call_soon_threadsafe(self._inbox.put_nowait, job)

    async def argument(self, future: SluiceFuture[Any]) -> Any:
        """A future among the arguments -> its result."""
        return await future

    async def serve(self, done: cf.Future[Any]) -> None:
        """In the calling coroutine: run the bodies handed over until the run ends."""
        loop = self._loop
        done.add_done_callback(lambda _: loop.call_soon_threadsafe(self._inbox.put_nowait, None))
        while True:
            job = await self._inbox.get()
            if job is None:
                return
            await asyncio.ensure_future(run_async_body(job))


class Dispatcher:
    """A thread running an event loop that admits task runs and drives them to the end."""

    def __init__(self, url: str, name: str = "sluice-dispatcher") -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cancelled: set[asyncio.Task[Any]] = set()
        self._limits: sluice.limits.aio.Limits | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def limits(self) -> sluice.limits.aio.Limits:
        """The async limits client of this dispatcher's store (created on first use)."""
        if self._limits is None:
            self._limits = sluice.limits.aio.Limits(self.url)
        return self._limits

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Start a coroutine on the loop, from any thread."""
        _loops.post_new(self.loop, self._spawn, coro)  # behind the ends of running ones

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def run(self, coro: Coroutine[Any, Any, None]) -> cf.Future[None]:
        """Run a coroutine on the loop; its concurrent future."""
        return asyncio.run_coroutine_threadsafe(self._tracked(coro), self.loop)

    async def _tracked(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await coro
        finally:
            self._tasks.discard(task)

    def cancel_all(self) -> None:
        """Cancel every task run this dispatcher drives (they record Cancelled)."""

        def cancel() -> None:
            later = False
            for task in list(self._tasks):
                # Once each: a second cancel would interrupt the release of its lease.
                if task in self._cancelled:
                    continue
                if _not_started(task):
                    # Cancelled before its first step, it would never even record
                    # Cancelled: it is cancelled after that step (already scheduled).
                    later = True
                    continue
                self._cancelled.add(task)
                task.add_done_callback(self._cancelled.discard)
                task.cancel()
            if later or _loops.pending_new(self.loop):  # task runs not started yet
                self.loop.call_soon(cancel)

        self.loop.call_soon_threadsafe(cancel)

    def close(self, timeout: float = 30.0) -> None:
        """Close the limits client and stop the loop (after every task run ended, or
        ``timeout`` seconds)."""

        async def finish() -> None:
            while self._tasks or _loops.pending_new(self.loop):  # some not started yet
                if self._tasks:
                    await asyncio.gather(*list(self._tasks), return_exceptions=True)
                else:
                    await asyncio.sleep(0)
            if self._limits is not None:
                await self._limits.aclose()

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(finish(), self.loop).result(timeout)
            except Exception as exc:
                log.warning("sluice: dispatcher did not close cleanly: %r", exc)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5.0)
        if not self._thread.is_alive():
            self.loop.close()


def _not_started(task: asyncio.Task[Any]) -> bool:
    coro = task.get_coro()
    return inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED


@dataclass
class Execution:
    """What runs a flow run's task runs: its runner, dispatcher, executor and futures."""

    run: FlowRun
    runner: TaskRunner
    dispatcher: Dispatcher
    executor: PoolExecutor
    futures: list[SluiceFuture[Any]] = field(default_factory=list)
    cancelled_until: float | None = None
    """Once the task runs were cancelled: the time (``time.monotonic()``) until which
    closing waits for them; a body still running then is left to end in its worker."""

    def cancel_all(self, grace: float) -> None:
        """Cancel every task run not yet ended (each releases its lease); closing waits
        for them at most ``grace`` seconds from the first cancel."""
        if self.cancelled_until is None:
            self.cancelled_until = time.monotonic() + grace
        self.dispatcher.cancel_all()

    def close(self) -> None:
        """Stop the dispatcher (after every task run ended) and the runner's workers."""
        if self.cancelled_until is None:
            self.dispatcher.close()
            self.runner.shutdown(wait=True)
        else:
            # Cancelled: the task runs had their grace; what still runs is not waited for.
            left = self.cancelled_until - time.monotonic()
            self.dispatcher.close(timeout=max(left, _CLOSE_MIN))
            self.runner.shutdown(wait=not self.executor.bodies_running())
        with _lock:
            _executions.pop(self.run, None)


_CLOSE_MIN = 1.0
"""Seconds a cancelled run's dispatcher is given to close its store client, past the grace."""


_executions: weakref.WeakKeyDictionary[FlowRun, Execution] = weakref.WeakKeyDictionary()
_defaults: dict[str, Dispatcher] = {}
_lock = threading.Lock()


def start_execution(run: FlowRun, runner: TaskRunner) -> Execution:
    """Start a flow run's runner and dispatcher (on the run's store URL)."""
    runner.start()
    dispatcher = Dispatcher(run.url)
    execution = Execution(run, runner, dispatcher, PoolExecutor(runner, dispatcher, run))
    with _lock:
        _executions[run] = execution
    return execution


def execution_of(run: FlowRun) -> Execution:
    """The execution of a flow run that is running in this process."""
    with _lock:
        return _executions[run]


def _default_dispatcher() -> Dispatcher:
    """Outside flows: one dispatcher per store URL for the process."""
    url = settings.resolve_url().url
    with _lock:
        dispatcher = _defaults.get(url)
        if dispatcher is None:
            dispatcher = _defaults[url] = Dispatcher(url, "sluice-dispatcher-default")
        return dispatcher


def admit(
    task: TaskSpec,
    run: TaskRun,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    caller: CallerThread | CallerLoop | None = None,
) -> tuple[SluiceFuture[Any], cf.Future[None] | None]:
    """Start a task run's life on its dispatcher: its future, and (for a direct call)
    a future of its coroutine's end, for the caller to serve bodies until then.

    Without ``caller``, the run was submitted in a flow run and its body goes to
    that flow's runner; with one, the caller runs the body (a direct call).
    """
    future: SluiceFuture[Any] = SluiceFuture(run)
    flow_run = run.flow_run
    execution = execution_of(flow_run) if flow_run is not None else None
    dispatcher = execution.dispatcher if execution is not None else _default_dispatcher()
    executor: Executor
    if caller is not None:
        executor = caller
    else:
        assert execution is not None, "a submitted task run belongs to a flow run"
        executor = execution.executor
        execution.futures.append(future)
    life = drive(dispatcher.limits, task, run, args, kwargs, future, executor)
    if caller is None:
        dispatcher.spawn(life)
        return future, None
    return future, dispatcher.run(life)
