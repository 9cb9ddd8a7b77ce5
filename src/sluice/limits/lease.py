"""What a process knows of each lease it holds, and the read-only face its Lease objects share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sluice.errors import LeaseLost
from sluice.limits import counters
from sluice.limits.model import utc
from sluice.store.base import AcquireRequest, Granted

__all__ = ["LeaseState", "LeaseView", "raise_if_lost"]


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
    if not found and not state.lost:
        counters.record_lost(state.names)
        state.lost = True
        state.lost_reason = "expired or revoked (reset, forced delete)"
    if state.lost:
        raise LeaseLost(state.id, state.names, state.lost_reason)


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
    def lost(self) -> bool:
        """True once the lease was found expired or revoked; final."""
        return self._state.lost

    @property
    def released(self) -> bool:
        """True once release() was called."""
        return self._state.released

    def __repr__(self) -> str:
        flag = " lost" if self.lost else (" released" if self.released else "")
        return f"<{type(self).__name__} {self.id} {list(self.names)} occupy={self.occupy}{flag}>"
