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
    RunNotFound,
    SluiceError,
    TaskTimeoutError,
)
from sluice.flows import (
    State,
    StateName,
    as_completed,
    flow,
    get_run_logger,
    task,
    wait,
)
from sluice.limits.model import Holder, Limit, LimitStatus, LimitTotals, Waiter
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
    "LimitTotals",
    "Limits",
    "MissingLimitWarning",
    "RunNotFound",
    "SluiceError",
    "State",
    "StateName",
    "TaskTimeoutError",
    "Waiter",
    "__version__",
    "as_completed",
    "concurrency",
    "errors",
    "flow",
    "get_run_logger",
    "rate_limit",
    "task",
    "wait",
]
