"""The limits engine: named concurrency and rate limits shared across processes and hosts.

Knows nothing of flows or tasks; usable on its own.
"""

from __future__ import annotations

from sluice.limits.model import Holder, Limit, LimitStatus, LimitTotals, Waiter, WaitInfo
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
