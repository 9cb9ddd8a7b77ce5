"""Store operations written once, as plans that do no I/O, run by a sync and an async driver.

A *plan* is a generator. It yields what it needs done, one request at a time,
and is sent each one's result; it returns the operation's outcome:

* a backend's own call object (an SQL statement, a Lua script call), which the
  driver executes on a connection;
* :class:`Sleep`, a pause the driver takes (``time.sleep`` or ``asyncio.sleep``),
  for back-off between tries.

A driver translates a failure of its database driver into a Sluice error with
the backend's one ``translate`` function and throws it into the plan at the
``yield`` that asked for the call, chained ``from`` the driver's exception (a
Sluice error raised by the backend's own code, such as its connection pool, goes
into the plan as it is). A plan may catch it (to try again after a
:class:`Sleep`); otherwise it leaves the plan and the driver. So decisions,
retries and their parsing exist once per backend, and :func:`run_plan` and
:func:`run_plan_async` are the only loops that differ between sync and async.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from sluice.errors import SluiceError

__all__ = ["Plan", "Sleep", "Translate", "run_plan", "run_plan_async"]

T = TypeVar("T")

Plan = Generator[Any, Any, T]
"""An operation: yields calls (or :class:`Sleep`), is sent each result, returns the outcome."""

Translate = Callable[[Exception], "SluiceError | None"]
"""A backend's one error translator: the Sluice error a driver exception means, or None
for an exception that is not the driver's (a bug, which propagates as it is)."""


@dataclass(frozen=True)
class Sleep:
    """A pause the driver takes before the plan goes on (a back-off between tries)."""

    seconds: float


def _failure(exc: Exception, translate: Translate) -> SluiceError:
    if isinstance(exc, SluiceError):  # translated already (a pool that could not connect)
        return exc
    error = translate(exc)
    if error is None:
        raise exc
    error.__cause__ = exc
    return error


def run_plan(plan: Plan[T], execute: Callable[[Any], Any], translate: Translate) -> T:
    """Drive a plan with a blocking ``execute``; sleep with ``time.sleep``."""
    result: Any = None
    error: SluiceError | None = None
    while True:
        try:
            request = plan.send(result) if error is None else plan.throw(error)
        except StopIteration as stop:
            value: T = stop.value
            return value
        result, error = None, None
        if isinstance(request, Sleep):
            time.sleep(request.seconds)
            continue
        try:
            result = execute(request)
        except Exception as exc:
            error = _failure(exc, translate)


async def run_plan_async(
    plan: Plan[T], execute: Callable[[Any], Awaitable[Any]], translate: Translate
) -> T:
    """Drive a plan with a coroutine ``execute``; sleep with ``asyncio.sleep``."""
    result: Any = None
    error: SluiceError | None = None
    while True:
        try:
            request = plan.send(result) if error is None else plan.throw(error)
        except StopIteration as stop:
            value: T = stop.value
            return value
        result, error = None, None
        if isinstance(request, Sleep):
            await asyncio.sleep(request.seconds)
            continue
        try:
            result = await execute(request)
        except Exception as exc:
            error = _failure(exc, translate)
