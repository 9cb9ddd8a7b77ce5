"""One acquire call, before and between store steps: its request and its waiting decisions.

:func:`new_request` validates what a caller asked for into a store request;
:class:`Attempt` decides, after each answer of the store, what the waiter does
next (return, sleep how long, or give up with :class:`AcquireTimeout`). Both
are pure (no I/O), shared by the sync and async drivers so the two cannot drift.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field, replace

from sluice import _fork
from sluice.errors import AcquireTimeout, InvalidRequest, MissingLimitWarning, StoreUnavailable
from sluice.limits import counters
from sluice.limits.model import (
    Kind,
    Limit,
    MissingPolicy,
    WaitInfo,
    validate_missing,
    validate_names,
    validate_occupy,
    validate_timeout,
)
from sluice.store.base import AcquireRequest, Queued

__all__ = ["MAX_BACKOFF", "Attempt", "limit_spec", "new_request"]

log = logging.getLogger("sluice")

MAX_BACKOFF = 2.0
"""Seconds: the longest pause of a queued waiter between tries while the store is unreachable."""

_MAX_HOLDER = 256


class _RequestIds:
    """Unique request ids, cheaply: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._prefix = uuid.uuid4().hex[:16]
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_request_ids = _RequestIds()


def new_request(
    names: object,
    occupy: object,
    kind: Kind,
    holder: object,
    missing: MissingPolicy,
) -> AcquireRequest:
    """Validate acquire arguments into a request with a fresh id."""
    checked_names = validate_names(names)
    checked_occupy = validate_occupy(occupy)
    if holder is not None and (not isinstance(holder, str) or len(holder) > _MAX_HOLDER):
        raise InvalidRequest(
            f"holder must be a str of at most {_MAX_HOLDER} characters, got {holder!r}"
        )
    label = holder if isinstance(holder, str) else threading.current_thread().name
    return AcquireRequest(
        request_id=_request_ids.next(),
        names=checked_names,
        occupy=checked_occupy,
        kind=kind,
        holder=label,
        missing=validate_missing(missing),
    )


# --------------------------------------------------------------------------- attempts


@dataclass
class Attempt:
    """The waiting decisions for one acquire call, independent of sync or async I/O."""

    request: AcquireRequest
    timeout: float | None
    safety_interval: float
    started: float = field(default_factory=time.monotonic)
    last: Queued | None = None
    missing: tuple[str, ...] = ()
    failures: int = 0
    """Steps in a row that could not reach the store while queued."""
    _retry: Queued | None = None

    @classmethod
    def start(cls, request: AcquireRequest, timeout: object, safety_interval: float) -> Attempt:
        return cls(request, validate_timeout(timeout), safety_interval)

    @property
    def waited(self) -> float:
        return time.monotonic() - self.started

    def next_sleep(self, outcome: Queued) -> float:
        """After a queued answer: how long to sleep before trying again (or time out)."""
        if self.last is None or self.last.seq != outcome.seq:
            self.request = _with_seq(self.request, outcome.seq)
        if outcome is not self._retry:
            self.failures = 0  # the store answered
        self.last = outcome
        self.missing = outcome.missing or self.missing
        # Spread the rare safety re-checks of many idle waiters over time.
        sleep = self.safety_interval * random.uniform(0.8, 1.0)
        if outcome.retry_in is not None:
            sleep = min(sleep, outcome.retry_in)
        if self.timeout is not None:
            left = self.timeout - self.waited
            if left <= 0:
                counters.record_timeout(outcome.blocked_on)
                raise AcquireTimeout(
                    self.request.names,
                    self.timeout,
                    self.waited,
                    outcome.position,
                    outcome.blocked_on,
                )
            sleep = min(sleep, left)
        return max(sleep, 0.0)

    def still_waiting(self, exc: StoreUnavailable) -> Queued:
        """After a retry could not reach the store: keep the place in line and try again
        after a back-off (doubling to at most :data:`MAX_BACKOFF` seconds, jittered).

        A request that never queued has no place to keep: ``exc`` is raised.
        """
        if self.last is None:
            raise exc
        self.failures += 1
        log.warning("sluice: %s; waiter %s keeps its place, retries", exc, self.request.request_id)
        backoff = min(MAX_BACKOFF, 0.05 * 2.0 ** (self.failures + 2)) * random.uniform(0.5, 1.0)
        self._retry = replace(self.last, retry_in=backoff)
        return self._retry

    def wait_info(self, outcome: Queued) -> WaitInfo:
        """What an ``on_wait`` callback is told after a queued answer."""
        return WaitInfo(self.request.names, outcome.blocked_on, outcome.position, self.waited)

    def warn_missing(self, missing: tuple[str, ...], stacklevel: int) -> None:
        """Warn once about names that do not exist, if the policy says "warn"."""
        missing = missing or self.missing
        if missing and self.request.missing == "warn":
            warnings.warn(
                MissingLimitWarning(
                    f"limit(s) {', '.join(repr(n) for n in missing)} do not exist; "
                    "acquired the others (missing='warn')"
                ),
                stacklevel=stacklevel + 1,
            )


def _with_seq(request: AcquireRequest, seq: int) -> AcquireRequest:
    return AcquireRequest(
        request.request_id,
        request.names,
        request.occupy,
        request.kind,
        request.holder,
        request.missing,
        seq,
    )


# --------------------------------------------------------------------------- leases


def limit_spec(
    name: object,
    slots: object,
    rate: object,
    burst: object,
    lease_ttl: object,
    active: object,
) -> Limit:
    """Validate create()/ensure() arguments into a Limit."""
    return Limit.build(
        name, slots=slots, rate=rate, burst=burst, lease_ttl=lease_ttl, active=active
    )


# --------------------------------------------------------------------------- sessions


_fork.after_fork_in_child(_request_ids.reset)  # a child must never reuse its parent's ids
