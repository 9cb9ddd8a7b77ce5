"""What a process knows of each lease it holds, and the read-only face its Lease objects share."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sluice.errors import LeaseLost
from sluice.limits import counters
from sluice.limits.model import fence_of, utc
from sluice.store.base import AcquireRequest, Granted

__all__ = ["LOST", "REVOKED", "LeaseState", "LeaseView", "LostCallback", "raise_if_lost"]

log = logging.getLogger("sluice.limits")

LostCallback = Callable[[LeaseLost], object]
"""Told, once, that a lease was lost (see :meth:`LeaseView.on_lost`); what it returns is ignored."""

LOST = "expired or revoked (reset, forced delete)"
"""Why a lease the store no longer has was lost, when the store does not say which."""
REVOKED = "revoked by a reset or a forced delete of a limit it held"
"""Why a lease was lost when the store said so at the moment it revoked it."""

_lost_lock = threading.Lock()
"""Guards every lease's lost flag against its callbacks (marking lost is rare)."""


@dataclass
class LeaseState:
    """What a process knows of one of its leases; shared by sync and async leases."""

    id: str
    names: tuple[str, ...]
    occupy: int
    holder: str
    acquired_at: float
    expires_at: float
    lease_ttl: float
    waited: float
    lost: bool = False
    released: bool = False
    lost_reason: str = ""
    fence: int = field(init=False)
    _on_lost: list[LostCallback] = field(init=False, default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.fence = fence_of(self.id)

    def mark_lost(self, reason: str) -> bool:
        """Mark the lease lost (final), count it and tell its callbacks; False if it was."""
        with _lost_lock:
            if self.lost:
                return False
            self.lost = True
            self.lost_reason = self.lost_reason or reason
            callbacks, self._on_lost = self._on_lost, []
        counters.record_lost(self.names)
        for callback in callbacks:
            self._tell(callback)
        return True

    def add_lost_callback(self, callback: LostCallback) -> None:
        """Have ``callback`` told when the lease is marked lost (at once if it is)."""
        with _lost_lock:
            if not self.lost:
                self._on_lost.append(callback)
                return
        self._tell(callback)

    def error(self) -> LeaseLost:
        """The LeaseLost error that says how this lease was lost."""
        return LeaseLost(self.id, self.names, self.lost_reason)

    def _tell(self, callback: LostCallback) -> None:
        try:
            callback(self.error())
        except Exception:  # whoever marks a lease lost (the keeper) must go on
            log.exception("sluice: a callback of lost lease %s failed", self.id)

    @classmethod
    def from_grant(cls, grant: Granted, request: AcquireRequest, waited: float) -> LeaseState:
        assert grant.lease_id is not None and grant.expires_at is not None
        assert grant.lease_ttl is not None
        return cls(
            grant.lease_id,
            grant.names,
            request.occupy,
            request.holder,
            grant.acquired_at,
            grant.expires_at,
            grant.lease_ttl,
            waited,
        )


def raise_if_lost(state: LeaseState, found: bool) -> None:
    """After a release: mark the lease lost if the store no longer had it, and say so."""
    if not found:
        state.mark_lost(LOST)
    if state.lost:
        raise state.error()


class LeaseView:
    """The read-only face of a lease, shared by the sync and async Lease classes."""

    _state: LeaseState

    @property
    def id(self) -> str:
        """The lease id (as shown by inspect())."""
        return self._state.id

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the limits acquired (those that exist and are active)."""
        return self._state.names

    @property
    def occupy(self) -> int:
        """Units held on each limit."""
        return self._state.occupy

    @property
    def holder(self) -> str:
        """The holder label recorded with the lease."""
        return self._state.holder

    @property
    def waited(self) -> float:
        """Seconds spent waiting before the grant."""
        return self._state.waited

    @property
    def acquired_at(self) -> datetime:
        """When the store granted the lease (store clock)."""
        return utc(self._state.acquired_at)

    @property
    def expires_at(self) -> datetime:
        """When the lease lapses unless renewed (the keeper renews it while held)."""
        return utc(self._state.expires_at)

    @property
    def fence(self) -> int:
        """The lease's fencing token: every later grant of its limits has a greater one.

        Pass it along to a resource the lease protects, which can refuse a holder whose
        fence is below the greatest it has seen: a holder that lost its lease (it expired,
        or a reset revoked it) may still be running when the next holder starts.
        """
        return self._state.fence

    @property
    def lost(self) -> bool:
        """True once the lease was found expired or revoked; final."""
        return self._state.lost

    def on_lost(self, callback: LostCallback) -> None:
        """Call ``callback`` with a LeaseLost error once the lease is found lost.

        Called once, at once if the lease is lost already, else from the thread that
        finds it lost (the process's lease keeper, a wake-up listener or a release): it
        must be quick and thread-safe. Never called for a lease given back while held.
        """
        self._state.add_lost_callback(callback)

    @property
    def released(self) -> bool:
        """True once release() was called."""
        return self._state.released

    def __repr__(self) -> str:
        flag = " lost" if self.lost else (" released" if self.released else "")
        return f"<{type(self).__name__} {self.id} {list(self.names)} occupy={self.occupy}{flag}>"
