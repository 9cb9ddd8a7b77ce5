"""Async twins of the public API: ``from sluice.aio import Limits, concurrency, rate_limit``."""

from __future__ import annotations

from sluice.limits.aio import Lease, Limits, concurrency, rate_limit

__all__ = ["Lease", "Limits", "concurrency", "rate_limit"]
