"""``@task``: a function whose runs take their limits, retry, time out and are recorded."""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import math
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from sluice.errors import InvalidRequest
from sluice.flows import context
from sluice.flows.context import FlowRun, TaskRun
from sluice.flows.dispatch import CallerLoop, CallerThread, admit
from sluice.flows.futures import SluiceFuture
from sluice.flows.states import State, StateName
from sluice.limits import Limit
from sluice.limits.model import validate_occupy

__all__ = ["Task", "task", "unmapped"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def check_name(name: object, fn: Callable[..., Any], what: str) -> str:
    """The run name: ``name`` if given (a non-empty str), else the function's name."""
    if name is None:
        return str(getattr(fn, "__name__", type(fn).__name__))
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidRequest(
            f"{what} name must be a non-empty str of at most 200 chars, got {name!r}"
        )
    return name


def check_retries(retries: object) -> int:
    """``retries``: an int >= 0."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidRequest(f"retries must be an int >= 0, got {retries!r}")
    return retries


def check_timeout(timeout: object) -> float | None:
    """``timeout_seconds``: None or a finite number of seconds > 0."""
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise InvalidRequest(f"timeout_seconds must be None or seconds > 0, got {timeout!r}")
    return float(timeout)


def _check_delay(delay: object) -> float | tuple[float, ...]:
    def one(value: object) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise InvalidRequest(
                "retry_delay_seconds must be seconds >= 0 or a list of them (one per retry), "
                f"got {delay!r}"
            )
        return float(value)

    if isinstance(delay, (list, tuple)):
        return tuple(one(v) for v in delay)
    return one(delay)


def _check_limits(limits: object) -> tuple[str, ...]:
    if limits is None:
        return ()
    if isinstance(limits, str) or not isinstance(limits, (list, tuple)):
        raise InvalidRequest(
            f"limits must be a list of limit names, e.g. limits=[{limits!r}], got {limits!r}"
            if isinstance(limits, str)
            else f"limits must be a list of limit names, got {limits!r}"
        )
    names: list[str] = []
    for name in limits:
        Limit.build(name, slots=1)  # validates the name (InvalidRequest naming it)
        if name in names:
            raise InvalidRequest(f"limits lists {name!r} twice: {list(limits)!r}")
        names.append(name)
    return tuple(names)


def _check_occupy(occupy: object) -> int:
    return validate_occupy(occupy)


def _check_tags(tags: object) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, str) or not isinstance(tags, (list, tuple, set, frozenset)):
        raise InvalidRequest(f"tags must be a list of str, got {tags!r}")
    for tag in tags:
        if not isinstance(tag, str) or not tag:
            raise InvalidRequest(f"tags must be non-empty str, got {tag!r} in {tags!r}")
    return tuple(sorted(tags)) if isinstance(tags, (set, frozenset)) else tuple(tags)


class unmapped:
    """Pass an iterable to every run of ``Task.map`` as is, instead of mapping over it."""

    def __init__(self, value: Any) -> None:
        self.value = value


class Task(Generic[P, R]):
    """A function run as task runs: limits held while its body runs, retries, timeout, history.

    ``Task.submit()`` returns a future, ``Task.map()`` a list of them; calling the
    task runs it at once and returns its result (an awaitable for an ``async def``
    task called from running async code).
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        limits: list[str] | tuple[str, ...] | None = None,
        occupy: int = 1,
        tags: Iterable[str] | None = None,
        retries: int = 0,
        retry_delay_seconds: float | list[float] = 0.0,
        timeout_seconds: float | None = None,
    ) -> None:
        if not callable(fn):
            raise InvalidRequest(f"@task needs a function, got {fn!r}")
        self.fn = fn
        self.name = check_name(name, fn, "task")
        self.limits = _check_limits(limits)
        self.occupy = _check_occupy(occupy)
        self.tags = _check_tags(tags)
        self.retries = check_retries(retries)
        self.retry_delay_seconds = _check_delay(retry_delay_seconds)
        self.timeout_seconds = check_timeout(timeout_seconds)
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)

    # ------------------------------------------------------------- calling

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task now and return its result (re-raising its exception)."""
        flow_run = context.current_flow_run()
        if self.is_async and _loop_running():
            return self._call_async(flow_run, args, kwargs)  # type: ignore[return-value]
        if flow_run is None and not (self.limits or self.retries or self.timeout_seconds):
            if self.is_async:
                return asyncio.run(self.fn(*args, **kwargs))  # type: ignore[arg-type]
            return self.fn(*args, **kwargs)
        return self._call_sync(flow_run, args, kwargs)

    def _call_sync(self, flow_run: FlowRun | None, args: Any, kwargs: Any) -> R:
        caller = CallerThread()
        future, done = admit(self, self._new_run(flow_run), args, kwargs, caller)
        assert done is not None
        try:
            caller.serve(done)
        except BaseException:
            done.cancel()
            raise
        result: R = future.result()
        return result

    async def _call_async(self, flow_run: FlowRun | None, args: Any, kwargs: Any) -> R:
        caller = CallerLoop()
        future, done = admit(self, self._new_run(flow_run), args, kwargs, caller)
        assert done is not None
        try:
            await caller.serve(done)
        except BaseException:
            done.cancel()
            raise
        result: R = await future
        return result

    # An ``async def`` task's runs are awaited: its futures hold what the coroutine returns.
    @overload
    def submit(
        self: Task[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> SluiceFuture[T]: ...
    @overload
    def submit(self: Task[P, T], *args: P.args, **kwargs: P.kwargs) -> SluiceFuture[T]: ...
    def submit(self, *args: Any, **kwargs: Any) -> SluiceFuture[Any]:
        """Start a task run on the flow's task runner; return its future at once.

        Futures among the arguments are waited on and replaced by their results.
        """
        flow_run = context.current_flow_run()
        if flow_run is None:
            raise InvalidRequest(
                f"{self.name}.submit() needs a running flow (call it inside an @flow "
                f"function), or call {self.name}(...) directly"
            )
        future: SluiceFuture[Any]
        future, _ = admit(self, self._new_run(flow_run), args, kwargs)
        return future

    @overload
    def map(
        self: Task[P, Coroutine[Any, Any, T]], *args: Any, **kwargs: Any
    ) -> list[SluiceFuture[T]]: ...
    @overload
    def map(self: Task[P, T], *args: Any, **kwargs: Any) -> list[SluiceFuture[T]]: ...
    def map(self, *args: Any, **kwargs: Any) -> list[SluiceFuture[Any]]:
        """Submit one run per item: list/tuple/range/iterator arguments are mapped in step
        (equal lengths); others, and values wrapped in ``unmapped()``, go to every run."""
        mapped: dict[int | str, list[Any]] = {}
        items: list[tuple[int | str, Any]] = [*enumerate(args), *kwargs.items()]
        for key, value in items:
            if isinstance(value, (list, tuple, range)) or (
                hasattr(value, "__next__") and hasattr(value, "__iter__")
            ):
                mapped[key] = list(value)
        lengths = {len(v) for v in mapped.values()}
        if not mapped:
            raise InvalidRequest(f"{self.name}.map() needs at least one list or iterable argument")
        if len(lengths) > 1:
            raise InvalidRequest(
                f"{self.name}.map() arguments to map over have different lengths: "
                + ", ".join(f"{k}={len(v)}" for k, v in mapped.items())
            )
        futures = []
        for i in range(lengths.pop()):
            call_args = [mapped[k][i] if k in mapped else _unwrap(v) for k, v in enumerate(args)]
            call_kwargs = {
                k: mapped[k][i] if k in mapped else _unwrap(v) for k, v in kwargs.items()
            }
            futures.append(self.submit(*call_args, **call_kwargs))
        return futures

    def _new_run(self, flow_run: FlowRun | None) -> TaskRun:
        run = TaskRun(self.name, flow_run, self.limits, self.occupy, self.tags)
        run.set_state(State(StateName.PENDING))
        return run

    def with_options(self, **options: Any) -> Task[P, R]:
        """A copy of this task with some decorator arguments changed."""
        current: dict[str, Any] = {
            "name": self.name,
            "limits": list(self.limits),
            "occupy": self.occupy,
            "tags": list(self.tags),
            "retries": self.retries,
            "retry_delay_seconds": list(self.retry_delay_seconds)
            if isinstance(self.retry_delay_seconds, tuple)
            else self.retry_delay_seconds,
            "timeout_seconds": self.timeout_seconds,
        }
        unknown = set(options) - set(current)
        if unknown:
            raise InvalidRequest(f"unknown task options: {sorted(unknown)}")
        current.update(options)
        return Task(self.fn, **current)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled by reference (module and name) where possible, for worker processes.
        module, qualname = getattr(self, "__module__", None), getattr(self, "__qualname__", "")
        if module and "<locals>" not in qualname and _lookup(module, qualname) is self:
            return (_lookup, (module, qualname))
        return (
            _rebuild,
            (
                self.fn,
                {
                    "name": self.name,
                    "limits": list(self.limits),
                    "occupy": self.occupy,
                    "tags": list(self.tags),
                    "retries": self.retries,
                    "retry_delay_seconds": self.retry_delay_seconds
                    if not isinstance(self.retry_delay_seconds, tuple)
                    else list(self.retry_delay_seconds),
                    "timeout_seconds": self.timeout_seconds,
                },
            ),
        )

    def __repr__(self) -> str:
        return f"Task({self.name!r}, limits={list(self.limits)!r})"


def _unwrap(value: Any) -> Any:
    return value.value if isinstance(value, unmapped) else value


def _lookup(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _rebuild(fn: Callable[..., Any], options: dict[str, Any]) -> Task[Any, Any]:
    return Task(fn, **options)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@overload
def task(__fn: Callable[P, R]) -> Task[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    limits: list[str] | tuple[str, ...] | None = None,
    occupy: int = 1,
    tags: Iterable[str] | None = None,
    retries: int = 0,
    retry_delay_seconds: float | list[float] = 0.0,
    timeout_seconds: float | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(
    __fn: Callable[P, R] | None = None,
    *,
    name: str | None = None,
    limits: list[str] | tuple[str, ...] | None = None,
    occupy: int = 1,
    tags: Iterable[str] | None = None,
    retries: int = 0,
    retry_delay_seconds: float | list[float] = 0.0,
    timeout_seconds: float | None = None,
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Make a function a task: ``@task`` or ``@task(limits=["api"], retries=2, ...)``.

    ``limits`` are acquired together (``occupy`` units of each) right before the
    body runs and released right after; ``tags`` are labels only.
    """
    options: dict[str, Any] = {
        "name": name,
        "limits": limits,
        "occupy": occupy,
        "tags": tags,
        "retries": retries,
        "retry_delay_seconds": retry_delay_seconds,
        "timeout_seconds": timeout_seconds,
    }
    if __fn is not None:
        return Task(__fn, **options)
    # Check the options now, at decoration time, not when the function arrives.
    Task(lambda: None, **options)
    return lambda fn: Task(fn, **options)
