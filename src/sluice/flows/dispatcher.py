"""Admission: one dispatcher per task runner, waiting for grants without taking a worker.

A dispatcher is a thread running an asyncio loop. Each submitted task run
becomes one coroutine on it (no thread per waiter) that, per attempt:

1. waits for the futures among its arguments (state Pending);
2. acquires all the task's limits in one atomic acquisition, through
   ``sluice.limits.aio.Limits.acquire``, recording Waiting (limit, queue position)
   whenever the store reports a new place in line;
3. only then takes a free worker of the runner (Waiting, no limit, if none is
   free), so a task waiting on a full limit never holds a worker and tasks on
   other limits keep running;
4. runs the body on the worker (Running), enforcing ``timeout_seconds``;
5. releases the lease, whatever happened, and completes, fails, or sleeps out
   the retry delay with no slot held (Retrying) and starts again at 2.

Direct calls (``my_task(...)``) run the same coroutine with the body run by
the calling thread or coroutine instead of a worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import sluice.limits.aio
from sluice.errors import LeaseLost, TaskTimeoutError
from sluice.flows.context import TaskRun
from sluice.flows.futures import SluiceFuture
from sluice.flows.jobs import Job, Outcome
from sluice.flows.runners import TaskRunner
from sluice.flows.states import State, StateName
from sluice.limits import WaitInfo

if TYPE_CHECKING:
    from sluice.flows.task import Task

__all__ = ["CallerLoop", "CallerThread", "Dispatcher", "Executor", "PoolExecutor"]

log = logging.getLogger("sluice")


class Executor(Protocol):
    """Where a granted body runs: a runner's worker, or the caller itself."""

    async def execute(self, job: Job) -> None:
        """Start the job once it may run (record Running); ``job.outcome`` reports its end."""


class PoolExecutor:
    """Bodies on the runner's workers, at most ``max_workers`` at once."""

    def __init__(self, runner: TaskRunner, dispatcher: Dispatcher) -> None:
        self._runner = runner
        self._dispatcher = dispatcher
        self._free: asyncio.Semaphore | None = None

    async def execute(self, job: Job) -> None:
        if self._free is None:
            self._free = asyncio.Semaphore(self._runner.max_workers)
        free = self._free
        if free.locked():
            job.task_run.set_state(
                State(
                    StateName.WAITING,
                    message=f"waiting for a free worker ({self._runner!r})",
                )
            )
        await free.acquire()
        loop = asyncio.get_running_loop()
        # The worker is free again when the body really ends, even after a timeout.
        job.outcome.add_done_callback(lambda _: loop.call_soon_threadsafe(free.release))
        job.task_run.set_state(State(StateName.RUNNING))
        self._runner.run(job)


class CallerThread:
    """Bodies run by the thread that called the task, which waits on :meth:`serve`."""

    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()

    async def execute(self, job: Job) -> None:
        job.task_run.set_state(State(StateName.RUNNING))
        self._inbox.put(job)

    def serve(self, done: cf.Future[Any]) -> None:
        """In the calling thread: run the bodies handed over until the run ends."""
        from sluice.flows.jobs import run_sync_body

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

    async def serve(self, done: cf.Future[Any]) -> None:
        """In the calling coroutine: run the bodies handed over until the run ends."""
        from sluice.flows.jobs import run_async_body

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
        self.loop.call_soon_threadsafe(self._spawn, coro)

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
            for task in list(self._tasks):
                task.cancel()

        self.loop.call_soon_threadsafe(cancel)

    def close(self) -> None:
        """Close the limits client and stop the loop (after every task run ended)."""

        async def finish() -> None:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            if self._limits is not None:
                await self._limits.aclose()

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(finish(), self.loop).result(30.0)
            except Exception as exc:
                log.warning("sluice: dispatcher did not close cleanly: %r", exc)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5.0)
        if not self._thread.is_alive():
            self.loop.close()


# --------------------------------------------------------------------------- the engine


async def _resolve(value: Any) -> Any:
    """Futures in arguments (also inside lists, tuples, sets and dicts) -> their results."""
    if isinstance(value, SluiceFuture):
        return await value
    if isinstance(value, (list, tuple, set)):
        items = [await _resolve(v) for v in value]
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
            return type(value)(*items)
        return type(value)(items)
    if isinstance(value, dict):
        return {k: await _resolve(v) for k, v in value.items()}
    return value


def _has_futures(value: Any) -> bool:
    if isinstance(value, SluiceFuture):
        return True
    if isinstance(value, (list, tuple, set)):
        return any(_has_futures(v) for v in value)
    if isinstance(value, dict):
        return any(_has_futures(v) for v in value.values())
    return False


def _on_wait(run: TaskRun) -> Callable[[WaitInfo], None]:
    last: list[tuple[str, int]] = []

    def on_wait(info: WaitInfo) -> None:
        where = (info.blocked_on, info.position)
        if last and last[-1] == where:
            return
        last.append(where)
        run.set_state(
            State(
                StateName.WAITING,
                message=f"queued on limit {info.blocked_on!r} at position {info.position}",
                limit=info.blocked_on,
                position=info.position,
            )
        )

    return on_wait


def _retry_delay(task: Task[Any, Any], attempt: int) -> float:
    delay = task.retry_delay_seconds
    if isinstance(delay, tuple):
        return delay[min(attempt, len(delay) - 1)] if delay else 0.0
    return delay


async def drive(
    dispatcher: Dispatcher,
    task: Task[Any, Any],
    run: TaskRun,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    future: SluiceFuture[Any],
    executor: Executor,
) -> None:
    """Take one task run from Pending to a final state; settle its future."""
    try:
        await _drive(dispatcher, task, run, args, kwargs, future, executor)
    except asyncio.CancelledError:
        run.set_state(State(StateName.CANCELLED, message="cancelled before it ended"))
        future._set_exception(asyncio.CancelledError(f"task run {run.id} was cancelled"))
        raise
    except BaseException as exc:  # a bug of ours must still settle the future
        run.set_state(State(StateName.CRASHED, message=f"{type(exc).__name__}: {exc}"))
        future._set_exception(exc)
        log.exception("sluice: task run %s crashed in the engine", run.id)


async def _drive(
    dispatcher: Dispatcher,
    task: Task[Any, Any],
    run: TaskRun,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    future: SluiceFuture[Any],
    executor: Executor,
) -> None:
    if _has_futures(args) or _has_futures(kwargs):
        try:
            args = await _resolve(args)
            kwargs = await _resolve(kwargs)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            run.set_state(
                State(StateName.FAILED, message=f"an upstream task run failed: {_describe(exc)}")
            )
            future._set_exception(exc)
            return
    attempt = 0
    while True:
        run.attempts += 1
        lease: sluice.limits.aio.Lease | None = None
        try:
            if task.limits:
                lease = await dispatcher.limits().acquire(
                    list(task.limits), task.occupy, holder=run.holder, on_wait=_on_wait(run)
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # admission failed: no such limit, bad occupy, store down
            run.set_state(State(StateName.FAILED, message=_describe(exc)))
            future._set_exception(exc)
            return
        try:
            outcome = await _run_body(task, run, args, kwargs, executor)
            # The body's end is recorded before the lease is released, so a Running
            # interval in the history always lies inside the lease.
            retry_in = _record_end(task, run, outcome, attempt)
        finally:
            if lease is not None:
                await _release(lease, run)
        if retry_in is None:
            _settle(future, run, outcome)
            return
        attempt += 1
        await asyncio.sleep(retry_in)


async def _run_body(
    task: Task[Any, Any],
    run: TaskRun,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    executor: Executor,
) -> Outcome:
    """Run the body once on the executor, enforcing the task's timeout."""
    job = Job(task.fn, args, kwargs, task.is_async, run, task)
    try:
        await executor.execute(job)
        return await _outcome(job, task)
    except BaseException:
        job.interrupt()  # cancelled: stop the body as far as it can be
        raise


async def _release(lease: sluice.limits.aio.Lease, run: TaskRun) -> None:
    try:
        await lease.release()
    except LeaseLost as exc:
        log.warning("sluice: %s", exc, extra=_extra(run))


def _record_end(task: Task[Any, Any], run: TaskRun, outcome: Outcome, attempt: int) -> float | None:
    """Record how the attempt ended; return the retry delay if the task runs again."""
    if outcome.kind == "ok":
        run.set_state(State(StateName.COMPLETED))
        return None
    if outcome.kind == "crashed":
        run.set_state(State(StateName.CRASHED, message=str(outcome.value)))
        log.error(
            "task run %s (%s) crashed: %s", run.name, run.id, outcome.value, extra=_extra(run)
        )
        return None
    error = outcome.value
    assert isinstance(error, BaseException)
    if attempt < task.retries and isinstance(error, Exception):
        delay = _retry_delay(task, attempt)
        run.set_state(
            State(
                StateName.RETRYING,
                message=f"retry {attempt + 1} of {task.retries} in {delay:g}s after "
                f"{_describe(error)}",
            )
        )
        log.warning(
            "task run %s (%s) failed, retrying in %gs: %s",
            run.name,
            run.id,
            delay,
            _describe(error),
            extra=_extra(run),
        )
        return delay
    final = StateName.TIMED_OUT if isinstance(error, TaskTimeoutError) else StateName.FAILED
    run.set_state(State(final, message=_describe(error)))
    log.error(
        "task run %s (%s) %s: %s",
        run.name,
        run.id,
        final.value,
        _describe(error),
        extra=_extra(run),
    )
    return None


def _settle(future: SluiceFuture[Any], run: TaskRun, outcome: Outcome) -> None:
    """Give the future its result or exception, once the lease is back."""
    if outcome.kind == "ok":
        future._set_result(outcome.value)
    elif outcome.kind == "crashed":
        future._set_exception(_crash_error(run, str(outcome.value)))
    else:
        future._set_exception(outcome.value)


async def _outcome(job: Job, task: Task[Any, Any]) -> Outcome:
    waiter: Awaitable[Outcome] = asyncio.wrap_future(job.outcome)
    timeout = task.timeout_seconds
    if timeout is None:
        outcome = await waiter
    else:
        try:
            outcome = await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            job.interrupt()
            return Outcome("error", TaskTimeoutError(task.name, timeout))
    if outcome.kind == "interrupted":  # stopped by us, yet it reported before we moved on
        error: BaseException = (
            TaskTimeoutError(task.name, timeout)
            if timeout is not None
            else asyncio.CancelledError(f"task run {job.task_run.id} was interrupted")
        )
        return Outcome("error", error)
    return outcome


def _crash_error(run: TaskRun, message: str) -> BaseException:
    from sluice.errors import SluiceError

    return SluiceError(f"task run {run.name!r} ({run.id}) crashed: {message}")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _extra(run: TaskRun) -> dict[str, Any]:
    return {
        "flow_run_id": run.flow_run_id or None,
        "flow_run_name": run.flow_run.name if run.flow_run else None,
        "task_run_id": run.id,
        "task_run_name": run.name,
    }
