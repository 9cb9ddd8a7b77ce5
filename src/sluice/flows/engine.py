"""The life of one task run, as a coroutine: wait for its inputs and limits, run, release.

Each task run is one coroutine (:func:`drive`) on its dispatcher's event loop
(:mod:`sluice.flows.dispatch`), so a waiting task run costs no thread. Per attempt:

1. it waits for the futures among its arguments (state Pending);
2. acquires all the task's limits in one atomic acquisition, through
   ``sluice.limits.aio.Limits.acquire``, recording Waiting (limit, queue position)
   whenever the store reports a new place in line;
3. only then hands the body to its :class:`Executor` (a free worker of the
   runner, or the caller itself), so a task waiting on a full limit never holds
   a worker and tasks on other limits keep running;
4. the body runs (Running), within ``timeout_seconds``, and only while the lease
   holds: a lease found lost (a reset revoked it, or it expired) interrupts the
   body as a timeout does, and the attempt fails with LeaseLost;
5. the lease is released, whatever happened, and the run completes, fails, or
   sleeps out the retry delay with no slot held (Retrying) and starts again at 2.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
from collections.abc import Callable
from typing import Any, Protocol

import sluice.limits.aio
from sluice import _loops
from sluice.errors import LeaseLost, SluiceError, StoreError, TaskTimeoutError
from sluice.flows.context import TaskRun
from sluice.flows.futures import SluiceFuture
from sluice.flows.jobs import Job, Outcome
from sluice.flows.states import State, StateName
from sluice.limits import WaitInfo

__all__ = ["Executor", "TaskSpec", "drive"]

log = logging.getLogger("sluice.flows")


class TaskSpec(Protocol):
    """What the engine needs of a task (:class:`~sluice.flows.task.Task` has it)."""

    @property
    def fn(self) -> Callable[..., Any]: ...
    @property
    def name(self) -> str: ...
    @property
    def limits(self) -> tuple[str, ...]: ...
    @property
    def occupy(self) -> int: ...
    @property
    def retries(self) -> int: ...
    @property
    def retry_delay_seconds(self) -> float | tuple[float, ...]: ...
    @property
    def timeout_seconds(self) -> float | None: ...
    @property
    def is_async(self) -> bool: ...


class Executor(Protocol):
    """Where a granted body runs: a runner's worker, or the caller itself."""

    async def execute(self, job: Job) -> None:
        """Start the job once it may run (record Running); ``job.outcome`` reports its end."""

    async def argument(self, future: SluiceFuture[Any]) -> Any:
        """What a body is given for a future among its arguments, once that run ended."""


async def _resolve(value: Any, executor: Executor) -> Any:
    """Futures in arguments (also inside lists, tuples, sets and dicts) -> what the
    executor gives the body for them (their results, or e.g. a cluster's handle)."""
    if isinstance(value, SluiceFuture):
        return await executor.argument(value)
    if isinstance(value, (list, tuple, set)):
        items = [await _resolve(v, executor) for v in value]
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
            return type(value)(*items)
        return type(value)(items)
    if isinstance(value, dict):
        return {k: await _resolve(v, executor) for k, v in value.items()}
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


def _retry_delay(task: TaskSpec, attempt: int) -> float:
    delay = task.retry_delay_seconds
    if isinstance(delay, tuple):
        return delay[min(attempt, len(delay) - 1)] if delay else 0.0
    return delay


async def drive(
    limits: Callable[[], sluice.limits.aio.Limits],
    task: TaskSpec,
    run: TaskRun,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    future: SluiceFuture[Any],
    executor: Executor,
) -> None:
    """Take one task run from Pending to a final state; settle its future.

    ``limits`` gives the async limits client of the store (made on first use).
    """
    try:
        await _drive(limits, task, run, args, kwargs, future, executor)
    except asyncio.CancelledError:
        run.set_state(State(StateName.CANCELLED, message="cancelled before it ended"))
        future._set_exception(asyncio.CancelledError(f"task run {run.id} was cancelled"))
        raise
    except BaseException as exc:  # a bug of ours must still settle the future
        run.set_state(State(StateName.CRASHED, message=f"{type(exc).__name__}: {exc}"))
        future._set_exception(exc)
        log.exception("sluice: task run %s crashed in the engine", run.id)


async def _drive(
    limits: Callable[[], sluice.limits.aio.Limits],
    task: TaskSpec,
    run: TaskRun,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    future: SluiceFuture[Any],
    executor: Executor,
) -> None:
    if _has_futures(args) or _has_futures(kwargs):
        try:
            args = await _resolve(args, executor)
            kwargs = await _resolve(kwargs, executor)
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
                lease = await limits().acquire(
                    task.limits, task.occupy, holder=run.holder, on_wait=_on_wait(run)
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # admission failed: no such limit, bad occupy, store down
            run.set_state(State(StateName.FAILED, message=_describe(exc)))
            future._set_exception(exc)
            return
        outcome: Outcome | None = None
        try:
            outcome = await _run_body(task, run, args, kwargs, executor, lease)
            # The body's end is recorded before the lease is released, so a Running
            # interval in the history always lies inside the lease.
            retry_in = _record_end(task, run, outcome, attempt)
        finally:
            if lease is not None:
                told = outcome is not None and isinstance(outcome.value, LeaseLost)
                await _release(lease, run, told)
        if retry_in is None:
            _settle(future, run, outcome)
            return
        attempt += 1
        await asyncio.sleep(retry_in)


async def _run_body(
    task: TaskSpec,
    run: TaskRun,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    executor: Executor,
    lease: sluice.limits.aio.Lease | None,
) -> Outcome:
    """Run the body once on the executor, enforcing the task's timeout and its lease."""
    job = Job(task.fn, args, kwargs, task.is_async, run, task)
    watch = _LeaseWatch(job, asyncio.get_running_loop())
    if lease is not None:
        lease.on_lost(watch)
    try:
        await executor.execute(job)
        return await _outcome(job, task, watch)
    except BaseException:
        job.interrupt()  # cancelled: stop the body as far as it can be
        raise


class _LeaseWatch:
    """Stops a body whose lease is lost, told by the thread that finds it lost.

    The body is interrupted right there, before the process's line can hand the
    revoked units to a waiter of this process (the store's wake-up names the
    revoked leases first), so two bodies of this process never overlap on them.
    """

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        self.job = job
        self.error: LeaseLost | None = None
        self.fired: asyncio.Future[None] = loop.create_future()
        self._loop = loop

    def __call__(self, error: LeaseLost) -> None:
        self.error = error  # before the interrupt: an interrupted body reads it
        self.job.interrupt()
        _loops.post(self._loop, _fire, self.fired)


def _fire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _release(lease: sluice.limits.aio.Lease, run: TaskRun, told: bool = False) -> None:
    try:
        await lease.release()
    except LeaseLost as exc:
        if not told:  # a run that failed with it has said so already
            log.warning("sluice: %s", exc, extra=_extra(run))
    except StoreError as exc:
        _release_failed(lease, run, exc)


def _release_failed(lease: sluice.limits.aio.Lease, run: TaskRun, exc: StoreError) -> None:
    """The run ended, but its lease could not be given back: the store frees it by itself."""
    log.warning(
        "sluice: task run %s (%s) could not release lease %s (%s); the store frees its "
        "units when the lease expires, at %s",
        run.name,
        run.id,
        lease.id,
        exc,
        lease.expires_at.isoformat(timespec="seconds"),
        extra=_extra(run),
    )


def _record_end(task: TaskSpec, run: TaskRun, outcome: Outcome, attempt: int) -> float | None:
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
    failed = final is StateName.FAILED
    if failed:
        run.record_error(error)  # its traceback, kept in the run history
    run.set_state(State(final, message=_describe(error)))
    log.error(
        "task run %s (%s) %s: %s",
        run.name,
        run.id,
        final.value,
        _describe(error),
        exc_info=error if failed else None,
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


def _copy_outcome(done: cf.Future[Outcome], waiter: asyncio.Future[Outcome]) -> None:
    if not waiter.done():
        waiter.set_result(done.result())


async def _outcome(job: Job, task: TaskSpec, watch: _LeaseWatch) -> Outcome:
    """How the body ended; a body whose lease was lost ends then, with LeaseLost."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Outcome] = loop.create_future()
    job.outcome.add_done_callback(lambda done: _loops.post(loop, _copy_outcome, done, waiter))
    timeout = task.timeout_seconds
    await asyncio.wait((waiter, watch.fired), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if not waiter.done():
        if watch.error is not None:  # interrupted, as a timeout would; not waited for
            return Outcome("error", watch.error)
        job.interrupt()
        assert timeout is not None
        return Outcome("error", TaskTimeoutError(task.name, timeout))
    outcome = waiter.result()
    if outcome.kind == "interrupted":  # stopped by us, yet it reported before we moved on
        error: BaseException = (
            watch.error
            if watch.error is not None
            else TaskTimeoutError(task.name, timeout)
            if timeout is not None
            else asyncio.CancelledError(f"task run {job.task_run.id} was interrupted")
        )
        return Outcome("error", error)
    return outcome


def _crash_error(run: TaskRun, message: str) -> BaseException:
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
