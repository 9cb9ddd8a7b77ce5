"""The limits engine: named concurrency and rate limits shared across processes and hosts.

Knows nothing of flows or tasks; usable on its own. Its pure floor, the public
values (:mod:`sluice.limits.model`) and the rate math (:mod:`sluice.limits.gcra`),
imports nothing of Sluice but errors, so the stores below may use it; the
client (``Limits``, ``Lease`` ...) sits above the stores and is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sluice.limits.model import Holder, Limit, LimitStatus, LimitTotals, Waiter, WaitInfo

if TYPE_CHECKING:
    from sluice.limits.sync import Lease, Limits, concurrency, rate_limit

__all__ = [
    "Holder",
    "Lease",
    "Limit",
    "LimitStatus",
    "LimitTotals",
    "Limits",
    "WaitInfo",
    "Waiter",
    "concurrency",
    "rate_limit",
]

_CLIENT = frozenset({"Lease", "Limits", "concurrency", "rate_limit"})


def __getattr__(name: str) -> Any:
    # The client imports the stores, which import this package's pure floor:
    # loading it lazily keeps that floor importable from anywhere.
    if name in _CLIENT:
        from sluice.limits import sync

        return getattr(sync, name)
    raise AttributeError(f"module 'sluice.limits' has no attribute {name!r}")
