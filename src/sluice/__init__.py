"""Sluice: global concurrency and rate limits that never stall, never leak a slot,
and explain every second a task spent waiting.

>>> from sluice import Limits
>>> limits = Limits("memory://doctest")
>>> limits.create("db", slots=2)
Limit(name='db', slots=2, rate=None, burst=None, active=True, lease_ttl=30.0)
>>> with limits.concurrency("db") as lease:
...     limits.inspect("db").in_use
1
"""

from __future__ import annotations

from sluice import errors
from sluice.errors import (
    AcquireTimeout,
    InvalidRequest,
    LeaseLost,
    LimitBusy,
    LimitExists,
    LimitNotFound,
    MissingLimitWarning,
    SluiceError,
)
from sluice.limits.model import Holder, Limit, LimitStatus, Waiter
from sluice.limits.sync import Lease, Limits, concurrency, rate_limit

__version__ = "0.1.0"

__all__ = [
    "AcquireTimeout",
    "Holder",
    "InvalidRequest",
    "Lease",
    "LeaseLost",
    "Limit",
    "LimitBusy",
    "LimitExists",
    "LimitNotFound",
    "LimitStatus",
    "Limits",
    "MissingLimitWarning",
    "SluiceError",
    "Waiter",
    "__version__",
    "concurrency",
    "errors",
    "rate_limit",
]
