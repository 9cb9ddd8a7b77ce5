"""How long one store step may take: the per-step deadline every store enforces.

A *step* is one store operation as a caller sees it, retries and reconnections
included (an exchange round, a renewal, a release, an admin call, a read). Every
store gives up on a step after :func:`step_timeout` seconds and raises
:class:`~sluice.errors.StoreUnavailable` naming the store and the deadline
(:func:`overdue`), however the store stalls: a SQLite write lock held by a paused
process, a Redis or PostgreSQL server that stops answering, a connection that
cannot be made. Set by ``SLUICE_STEP_TIMEOUT`` (seconds, read when a store is
opened), default :data:`DEFAULT_STEP_TIMEOUT`.

Above the stores, a waiter with a timeout never waits for a step: it gives up
within its timeout plus :data:`sluice.limits.waiting.TIMEOUT_GRACE`.
"""

from __future__ import annotations

import math
import os
import time

from sluice.errors import ConfigError, StoreUnavailable

__all__ = [
    "DEFAULT_STEP_TIMEOUT",
    "ENV_STEP_TIMEOUT",
    "MAX_STEP_TIMEOUT",
    "MIN_STEP_TIMEOUT",
    "Deadline",
    "overdue",
    "step_timeout",
]

ENV_STEP_TIMEOUT = "SLUICE_STEP_TIMEOUT"
DEFAULT_STEP_TIMEOUT = 10.0
"""Seconds one store step may take before it fails with StoreUnavailable."""
MIN_STEP_TIMEOUT = 0.1
MAX_STEP_TIMEOUT = 3600.0


def step_timeout() -> float:
    """The per-step deadline in seconds: ``SLUICE_STEP_TIMEOUT``, else the default."""
    raw = os.environ.get(ENV_STEP_TIMEOUT, "").strip()
    if not raw:
        return DEFAULT_STEP_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not MIN_STEP_TIMEOUT <= value <= MAX_STEP_TIMEOUT:  # (nan fails too)
        raise ConfigError(
            f"invalid {ENV_STEP_TIMEOUT}={raw!r}: give the seconds one store step may take, "
            f"{MIN_STEP_TIMEOUT:g} to {MAX_STEP_TIMEOUT:g} (default {DEFAULT_STEP_TIMEOUT:g})"
        )
    return value


def overdue(url: str, seconds: float, doing: str = "") -> StoreUnavailable:
    """The error of a step that did not finish within the deadline."""
    what = f" ({doing})" if doing else ""
    return StoreUnavailable(
        f"store {url} did not answer within {seconds:g} s{what}: the per-step deadline "
        f"({ENV_STEP_TIMEOUT}); check that the store is running and not paused or locked"
    )


class Deadline:
    """The end of one step: ``seconds`` from now, on the monotonic clock."""

    __slots__ = ("at", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left (0 once passed)."""
        return max(self.at - time.monotonic(), 0.0)

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.at
