"""What stands in this process's line (:mod:`sluice.limits.line`): waiters, the store
tickets they stand on, releases and withdrawals on their way to the store.

A :class:`Waiter` is one acquire call; identical waiters (same :data:`Key`) stand on
one :class:`Ticket`, in arrival order (their ordinals). A waiter who gives up is
:class:`Leaving` until the line has undone its part (a :class:`Withdraw` of one
owed grant, or the release of the grant that comes for it).
"""

from __future__ import annotations

import itertools
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sluice import _fork
from sluice.limits.lease import LeaseState
from sluice.limits.model import WaitInfo
from sluice.store.base import AcquireRequest, Granted, Queued, Withdrawal

__all__ = [
    "Key",
    "Leaving",
    "Release",
    "Signal",
    "Ticket",
    "Waiter",
    "Withdraw",
    "key_of",
    "nothing",
    "request_ids",
]

Key = tuple[tuple[str, ...], int, str, str, str]
"""What makes requests identical: names, occupy, kind, holder, missing policy."""

Signal = Callable[[], None]


def key_of(request: AcquireRequest) -> Key:
    return (request.names, request.occupy, request.kind.value, request.holder, request.missing)


def nothing() -> None:
    """The signal of something nobody waits for."""


class Waiter:
    """One acquire call: its request, and what the line has told it so far."""

    __slots__ = (
        "answered_at",
        "asking",
        "cancelled",
        "error",
        "grant",
        "leaving",
        "missing",
        "ordinal",
        "request",
        "signal",
        "started",
        "state",
        "ticket",
        "told",
    )

    def __init__(self, request: AcquireRequest, signal: Signal) -> None:
        self.request = request
        self.signal = signal
        self.started = time.monotonic()
        self.ticket: Ticket | None = None
        self.grant: Granted | None = None
        self.state: LeaseState | None = None
        self.error: BaseException | None = None
        self.missing: tuple[str, ...] = ()
        self.ordinal = 0
        """Its arrival order on its ticket (its place there, less those served before it)."""
        self.told = False
        """Whether its place in line has news the waiter has not seen yet."""
        self.answered_at = 0.0
        """Monotonic time of the store's last answer about this waiter's place."""
        self.asking = False
        self.cancelled = False
        self.leaving: Leaving | None = None

    @property
    def done(self) -> bool:
        """Whether the waiter has its grant or its error, or gave up."""
        return self.grant is not None or self.error is not None or self.cancelled

    @property
    def info(self) -> Queued | None:
        """Where the waiter stands: its ticket's last place in line, plus the waiters of
        its ticket ahead of it (None before the store has placed it)."""
        ticket = self.ticket
        queued = ticket.queued if ticket is not None else None
        if ticket is None or queued is None or self.done:
            return None
        ahead = max(self.ordinal - ticket.head_ordinal(), 0)
        return Queued(
            queued.request_id,
            queued.seq,
            queued.blocked_on,
            queued.position + ahead,
            queued.retry_in,
            queued.lease_ttl,
            queued.missing,
            queued.wanted,
        )

    def wait_info(self) -> WaitInfo | None:
        """Where the waiter stands, for an ``on_wait`` callback (None before it queued)."""
        info = self.info
        if info is None:
            return None
        return WaitInfo(
            self.request.names, info.blocked_on, info.position, time.monotonic() - self.started
        )


@dataclass
class Release:
    """A lease to give back, and (once done) whether the store still had it."""

    lease_id: str
    signal: Signal
    found: bool | None = None
    error: BaseException | None = None


@dataclass
class Leaving:
    """A waiter who gave up, until the line has undone its part."""

    signal: Signal
    timed_out_on: str | None


@dataclass
class Withdraw:
    """A withdrawal to send, and the leaving waiters it settles."""

    withdrawal: Withdrawal
    settles: list[Signal] = field(default_factory=list)


@dataclass
class Ticket:
    """A store ticket of this process and the waiters standing on it, in order."""

    id: str
    request: AcquireRequest
    waiters: deque[Waiter] = field(default_factory=deque)
    leaving: deque[Leaving] = field(default_factory=deque)
    seq: int = 0
    queued: Queued | None = None
    wanted: int = 0
    """Grants the store owes the ticket, as far as this process knows."""
    due: float = 0.0
    """Monotonic time to ask about it again, unwoken (0: not scheduled)."""
    ordinals: int = 0
    unannounced: list[Waiter] = field(default_factory=list)
    """Waiters that joined since the store last placed the ticket: told their place next."""
    asking: list[Waiter] = field(default_factory=list)
    """Waiters that want the store's next answer about the ticket."""

    standing: int = 0
    """How many waiters stand on it (its ``waiters`` may still hold some that left)."""

    def head_ordinal(self) -> int:
        """The arrival order of the first waiter still standing on the ticket."""
        while self.waiters and self.waiters[0].done:
            self.waiters.popleft()
        return self.waiters[0].ordinal if self.waiters else self.ordinals

    def stand(self, waiter: Waiter) -> None:
        """Put a waiter at the end of the ticket's line."""
        waiter.ordinal = self.ordinals
        self.ordinals += 1
        self.standing += 1
        self.waiters.append(waiter)
        self.unannounced.append(waiter)


class Ids:
    """Unique ids for tickets and requests: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._prefix = f"{random.getrandbits(64):016x}"
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"


request_ids = Ids()
_fork.after_fork_in_child(request_ids.reset)  # a child must never reuse its parent's ids
