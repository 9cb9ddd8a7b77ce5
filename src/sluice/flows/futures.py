"""Futures of submitted task runs, and ``wait`` / ``as_completed`` over many of them."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import time
from collections.abc import Generator, Iterable, Iterator
from typing import Any, Generic, NamedTuple, TypeVar

from sluice.errors import InvalidRequest
from sluice.flows.context import TaskRun
from sluice.flows.states import State

__all__ = ["DoneAndNotDone", "RemoteResult", "SluiceFuture", "as_completed", "wait"]

R = TypeVar("R")


class RemoteResult:
    """A return value kept where its body ran (e.g. on a Dask cluster), fetched on use."""

    def fetch(self, timeout: float | None = None) -> Any:
        """The value itself, brought to this process."""
        raise NotImplementedError


class SluiceFuture(Generic[R]):
    """The eventual result of a submitted task run."""

    def __init__(self, task_run: TaskRun) -> None:
        self._run = task_run
        self._future: cf.Future[R] = cf.Future()

    @property
    def task_run_id(self) -> str:
        """The id of the task run this future belongs to."""
        return self._run.id

    @property
    def state(self) -> State:
        """The task run's current state."""
        return self._run.state

    def done(self) -> bool:
        """Whether the task run has reached a final state."""
        return self._future.done()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the task run ends, or ``timeout`` seconds pass (no error either way)."""
        cf.wait([self._future], timeout=_check_timeout(timeout))

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """The task's return value; re-raises its exception (or returns it, if not
        ``raise_on_failure``). Raises TimeoutError if it has not ended within ``timeout``."""
        done, _ = cf.wait([self._future], timeout=_check_timeout(timeout))
        if not done:
            raise TimeoutError(
                f"task run {self._run.name!r} ({self._run.id}) did not end within {timeout}s; "
                f"it is {self.state.name.value}"
            )
        exc = self._future.exception()
        if exc is not None:
            if raise_on_failure:
                raise exc
            return exc  # type: ignore[return-value]
        value = self._future.result()
        if isinstance(value, RemoteResult):
            return value.fetch(timeout)  # type: ignore[no-any-return]
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The task's exception, or None if it completed."""
        self.wait(timeout)
        if not self._future.done():
            raise TimeoutError(f"task run {self._run.id} did not end within {timeout}s")
        return self._future.exception()

    def add_done_callback(self, fn: Any) -> None:
        """Call ``fn(self)`` when the task run ends (at once if it has)."""
        self._future.add_done_callback(lambda _: fn(self))

    def __await__(self) -> Generator[Any, None, R]:
        """``await future`` in async code: the result, without blocking the event loop."""
        return self._fetched().__await__()

    async def _fetched(self) -> R:
        # Shielded: a cancelled awaiter must not cancel the task run's future (wrap_future
        # would), which the task run still settles and which cf.wait never sees as done.
        value = await asyncio.shield(self._followed())
        if isinstance(value, RemoteResult):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, value.fetch)
        return value

    def __repr__(self) -> str:
        return f"<SluiceFuture {self._run.name!r} run {self._run.id} {self.state.name.value}>"

    # ----------------------------------------------------------- for the engine

    def _followed(self) -> asyncio.Future[R]:
        """An asyncio future of the running loop that follows this one; its exception
        is not logged as never retrieved when nobody awaits it any more."""
        follower = asyncio.wrap_future(self._future)
        follower.add_done_callback(_retrieve)
        return follower

    def _set_result(self, value: R) -> None:
        if not self._future.done():
            self._future.set_result(value)

    def _set_exception(self, exc: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(exc)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class DoneAndNotDone(NamedTuple):
    """What :func:`wait` returns: the futures that ended and those still running."""

    done: set[SluiceFuture[Any]]
    not_done: set[SluiceFuture[Any]]


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise InvalidRequest(f"timeout must be None or seconds >= 0, got {timeout!r}")
    return float(timeout)


def _futures(futures: Iterable[SluiceFuture[Any]]) -> list[SluiceFuture[Any]]:
    items = list(futures)
    for f in items:
        if not isinstance(f, SluiceFuture):
            raise InvalidRequest(f"expected futures from Task.submit()/map(), got {f!r}")
    return items


def wait(futures: Iterable[SluiceFuture[Any]], timeout: float | None = None) -> DoneAndNotDone:
    """Block until every future has ended, or ``timeout`` seconds pass."""
    items = _futures(futures)
    done, _ = cf.wait([f._future for f in items], timeout=_check_timeout(timeout))
    return DoneAndNotDone(
        {f for f in items if f._future in done}, {f for f in items if f._future not in done}
    )


def as_completed(
    futures: Iterable[SluiceFuture[Any]], timeout: float | None = None
) -> Iterator[SluiceFuture[Any]]:
    """Yield the futures as they end; raise TimeoutError if ``timeout`` passes first."""
    items = _futures(futures)
    limit = _check_timeout(timeout)
    by_inner = {f._future: f for f in items}
    deadline = None if limit is None else time.monotonic() + limit
    pending = set(by_inner)
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, pending = cf.wait(pending, timeout=left, return_when=cf.FIRST_COMPLETED)
        if not done:
            raise TimeoutError(
                f"{len(pending)} of {len(items)} futures unfinished after {timeout}s"
            )
        for inner in done:
            yield by_inner[inner]
