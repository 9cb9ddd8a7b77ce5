"""``@flow``: a function whose run owns a task runner, waits for its tasks, and is recorded."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import inspect
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, overload

from sluice import settings
from sluice.errors import InvalidRequest, TaskTimeoutError
from sluice.flows import context
from sluice.flows.context import FlowRun
from sluice.flows.dispatch import Execution, start_execution
from sluice.flows.history import writer_for
from sluice.flows.jobs import Deadline, Interrupted
from sluice.flows.progress import Progress
from sluice.flows.runners import TaskRunner, ThreadPoolTaskRunner, exit_if_starting_worker
from sluice.flows.states import State, StateName
from sluice.flows.task import check_name, check_retries, check_timeout

__all__ = ["CANCEL_GRACE_SECONDS", "Flow", "flow"]

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("sluice.flows")


def _check_runner(runner: object) -> TaskRunner:
    if runner is None:
        return ThreadPoolTaskRunner()
    if isinstance(runner, type) and issubclass(runner, TaskRunner):
        return runner()
    if not isinstance(runner, TaskRunner):
        raise InvalidRequest(
            "task_runner must be a TaskRunner such as ThreadPoolTaskRunner(max_workers=10) "
            f"or ProcessPoolTaskRunner(), got {runner!r}"
        )
    return runner


class Flow(Generic[P, R]):
    """A function run as a flow run: tasks it submits share its task runner and history.

    Calling the flow runs it and returns its result (an ``async def`` flow returns
    a coroutine). The run waits for every task run it submitted before it ends.
    Interrupted (Ctrl-C) or cancelled (its asyncio task), it cancels the task runs not
    yet ended, each releasing its lease at once, and waits at most
    :data:`CANCEL_GRACE_SECONDS` for them and their bodies to end; a body that does not
    stop (a sync body in a call to C) is left to finish in its worker thread.
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        task_runner: TaskRunner | type[TaskRunner] | None = None,
        retries: int = 0,
        retry_delay_seconds: float = 0.0,
        timeout_seconds: float | None = None,
    ) -> None:
        if not callable(fn):
            raise InvalidRequest(f"@flow needs a function, got {fn!r}")
        self.fn = fn
        self.name = check_name(name, fn, "flow")
        self.task_runner = _check_runner(task_runner)
        self.retries = check_retries(retries)
        if (
            isinstance(retry_delay_seconds, bool)
            or not isinstance(retry_delay_seconds, (int, float))
            or not retry_delay_seconds >= 0
        ):
            raise InvalidRequest(
                f"retry_delay_seconds must be seconds >= 0, got {retry_delay_seconds!r}"
            )
        self.retry_delay_seconds = float(retry_delay_seconds)
        self.timeout_seconds = check_timeout(timeout_seconds)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", self.name)
        self.__qualname__ = getattr(fn, "__qualname__", self.name)
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the flow; return its result, or re-raise its exception."""
        exit_if_starting_worker()  # never again in a worker importing an unguarded script
        if self.is_async:
            return self._run_async(args, kwargs)  # type: ignore[return-value]
        return self._run_sync(args, kwargs)

    def __repr__(self) -> str:
        return f"Flow({self.name!r}, task_runner={self.task_runner!r})"

    # ------------------------------------------------------------- set-up and tear-down

    def _begin(self) -> Execution:
        url = settings.resolve_url().url
        run = FlowRun(self.name, writer_for(url), url, context.current_flow_run())
        execution = start_execution(run, self.task_runner.duplicate())
        run.set_state(State(StateName.PENDING))
        log.info("flow run %s (%s) started", run.name, run.id, extra=_extra(run))
        return execution

    def _end(self, execution: Execution, progress: Progress | None) -> None:
        run = execution.run
        execution.close()
        if progress is not None:
            progress.stop()
        if run.writer is not None:
            run.writer.flush(prune=run.parent is None)
        state = run.state
        log.log(
            logging.INFO if state.name is StateName.COMPLETED else logging.ERROR,
            "flow run %s (%s) %s%s",
            run.name,
            run.id,
            state.name.value,
            f": {state.message}" if state.message else "",
            extra=_extra(run),
        )

    # ------------------------------------------------------------- the life of a flow run

    def _life(self, run: FlowRun) -> Generator[_Step, Any, R]:
        """A flow run from Running to its final state, written once as a plan.

        It yields what must be done (run the body, wait for the task runs, cancel
        them, sleep a retry delay); :meth:`_run_sync` and :meth:`_run_async` do
        it and send back the result, or throw in what it raised.
        """
        attempt = 0
        while True:
            run.set_state(State(StateName.RUNNING))
            try:
                try:
                    result: R = yield _Body()
                    yield _WaitAll()
                except TaskTimeoutError as exc:
                    yield _CancelAll()
                    self._fail(run, exc)
                    raise
                except Exception as exc:
                    yield _WaitAll()
                    if attempt < self.retries:
                        attempt += 1
                        self._retry(run, attempt, exc)
                        yield _Sleep(self.retry_delay_seconds)
                        continue
                    self._fail(run, exc)
                    raise
            except (Exception, GeneratorExit):
                raise
            except BaseException as exc:  # KeyboardInterrupt, SystemExit, cancelled: any step
                try:
                    yield _CancelAll()
                finally:
                    run.set_state(
                        State(StateName.CANCELLED, message=f"interrupted by {type(exc).__name__}")
                    )
                raise
            run.set_state(State(StateName.COMPLETED))
            return result

    def _retry(self, run: FlowRun, attempt: int, exc: BaseException) -> None:
        run.set_state(
            State(
                StateName.RETRYING,
                message=f"retry {attempt} of {self.retries} in {self.retry_delay_seconds:g}s "
                f"after {type(exc).__name__}: {exc}",
            )
        )

    def _fail(self, run: FlowRun, exc: BaseException) -> None:
        final = StateName.TIMED_OUT if isinstance(exc, TaskTimeoutError) else StateName.FAILED
        if final is StateName.FAILED:
            run.record_error(exc)  # its traceback, kept in the run history
        run.set_state(State(final, message=f"{type(exc).__name__}: {exc}"))

    def _timed_out(self) -> TaskTimeoutError:
        assert self.timeout_seconds is not None
        return TaskTimeoutError(self.name, self.timeout_seconds, "flow")

    # ------------------------------------------------------------- the sync driver

    def _run_sync(self, args: Any, kwargs: Any) -> R:
        execution = self._begin()
        progress = Progress.start(execution.run)
        tokens = context.enter(execution.run, None)
        try:
            life = self._life(execution.run)
            sent: Any = None
            thrown: BaseException | None = None
            while True:
                try:
                    step = life.send(sent) if thrown is None else life.throw(thrown)
                except StopIteration as stop:
                    result: R = stop.value
                    return result
                sent, thrown = None, None
                try:
                    sent = self._do_sync(step, execution, args, kwargs)
                except BaseException as exc:
                    thrown = exc
        finally:
            context.leave(tokens)
            self._end(execution, progress)

    def _do_sync(self, step: _Step, execution: Execution, args: Any, kwargs: Any) -> Any:
        if isinstance(step, _Body):
            deadline = Deadline(self.timeout_seconds)
            try:
                with deadline:
                    return self.fn(*args, **kwargs)
            except Interrupted:
                if not deadline.fired:
                    raise
                raise self._timed_out() from None
        if isinstance(step, _WaitAll):
            _wait_all(execution)
        elif isinstance(step, _CancelAll):
            _cancel_all(execution)
        else:
            time.sleep(step.seconds)
        return None

    # ------------------------------------------------------------- the async driver

    async def _run_async(self, args: Any, kwargs: Any) -> R:
        execution = self._begin()
        progress = Progress.start(execution.run)
        tokens = context.enter(execution.run, None)
        try:
            life = self._life(execution.run)
            sent: Any = None
            thrown: BaseException | None = None
            while True:
                try:
                    step = life.send(sent) if thrown is None else life.throw(thrown)
                except StopIteration as stop:
                    result: R = stop.value
                    return result
                sent, thrown = None, None
                try:
                    sent = await self._do_async(step, execution, args, kwargs)
                except BaseException as exc:
                    thrown = exc
        finally:
            context.leave(tokens)
            await asyncio.to_thread(self._end, execution, progress)

    async def _do_async(self, step: _Step, execution: Execution, args: Any, kwargs: Any) -> Any:
        if isinstance(step, _Body):
            started = time.monotonic()
            try:
                return await asyncio.wait_for(self.fn(*args, **kwargs), self.timeout_seconds)  # type: ignore[arg-type]
            except asyncio.TimeoutError:
                limit = self.timeout_seconds
                if limit is None or time.monotonic() - started < limit:
                    raise  # the body's own TimeoutError, not the flow's timeout
                raise self._timed_out() from None
        if isinstance(step, _WaitAll):
            await _wait_all_async(execution)
        elif isinstance(step, _CancelAll):
            await asyncio.to_thread(_cancel_all, execution)
        else:
            await asyncio.sleep(step.seconds)
        return None


@dataclass(frozen=True)
class _Body:
    """Run the flow's body (within its timeout) and send back what it returns."""


@dataclass(frozen=True)
class _WaitAll:
    """Wait until every task run the flow submitted has ended."""


@dataclass(frozen=True)
class _CancelAll:
    """Cancel the task runs not yet ended and wait for them to give their leases back."""


@dataclass(frozen=True)
class _Sleep:
    """Sleep out a retry delay."""

    seconds: float


_Step = _Body | _WaitAll | _CancelAll | _Sleep


CANCEL_GRACE_SECONDS = 5.0
"""How long a cancelled flow run waits for its task runs and their bodies to end."""
# Bodies that honour cancellation end within milliseconds; the grace bounds the wait for
# those that do not (a sync body in C code) and for releases on a slow store.


def _cancel_all(execution: Execution) -> None:
    """Cancel every unfinished task run (each releases its lease) and wait for them
    and their bodies to end, at most :data:`CANCEL_GRACE_SECONDS` in all."""
    execution.cancel_all(CANCEL_GRACE_SECONDS)
    until = execution.cancelled_until
    assert until is not None
    seen = 0
    while True:
        # Task runs submitted meanwhile (by bodies still running) are cancelled too.
        futures = [f._future for f in execution.futures[seen:]]
        seen += len(futures)
        bodies = execution.executor.bodies_running()
        if not _wait_done([*futures, *bodies], until) or seen == len(execution.futures):
            return
        execution.cancel_all(CANCEL_GRACE_SECONDS)


def _wait_done(futures: list[cf.Future[Any]], until: float | None) -> bool:
    """Wait until every future is done, or ``time.monotonic()`` passes ``until``; whether
    they all are. (A future cancelled by ``asyncio.wrap_future`` counts as done, which
    ``cf.wait`` would never see.)"""
    pending = [f for f in futures if not f.done()]
    if not pending:
        return True
    lock = threading.Lock()
    left = [len(pending)]
    done = threading.Event()

    def one_done(_: cf.Future[Any]) -> None:
        with lock:
            left[0] -= 1
            if left[0] == 0:
                done.set()

    for future in pending:
        future.add_done_callback(one_done)
    return done.wait(None if until is None else max(0.0, until - time.monotonic()))


def _wait_all(execution: Execution) -> None:
    """Wait until every task run the flow submitted (also from inside tasks) has ended."""
    seen = 0
    while seen < len(execution.futures):
        batch = execution.futures[seen:]
        seen += len(batch)
        _wait_done([f._future for f in batch], None)


async def _wait_all_async(execution: Execution) -> None:
    seen = 0
    while seen < len(execution.futures):
        batch = execution.futures[seen:]
        seen += len(batch)
        await asyncio.wait([f._followed() for f in batch])


def _extra(run: FlowRun) -> dict[str, Any]:
    return {
        "flow_run_id": run.id,
        "flow_run_name": run.name,
        "task_run_id": None,
        "task_run_name": None,
    }


@overload
def flow(__fn: Callable[P, R]) -> Flow[P, R]: ...


@overload
def flow(
    *,
    name: str | None = None,
    task_runner: TaskRunner | type[TaskRunner] | None = None,
    retries: int = 0,
    retry_delay_seconds: float = 0.0,
    timeout_seconds: float | None = None,
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(
    __fn: Callable[P, R] | None = None,
    *,
    name: str | None = None,
    task_runner: TaskRunner | type[TaskRunner] | None = None,
    retries: int = 0,
    retry_delay_seconds: float = 0.0,
    timeout_seconds: float | None = None,
) -> Flow[P, R] | Callable[[Callable[P, R]], Flow[P, R]]:
    """Make a function a flow: ``@flow`` or ``@flow(task_runner=..., retries=1, ...)``."""
    options: dict[str, Any] = {
        "name": name,
        "task_runner": task_runner,
        "retries": retries,
        "retry_delay_seconds": retry_delay_seconds,
        "timeout_seconds": timeout_seconds,
    }
    if __fn is not None:
        return Flow(__fn, **options)
    Flow(lambda: None, **options)  # check the options at decoration time
    return lambda fn: Flow(fn, **options)
