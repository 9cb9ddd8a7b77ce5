"""What this process's acquisitions did, per limit: grants, timeouts, waits, lost leases.

The store counts every process's grants, timeouts and waits in each limit's
totals (``LimitStatus.totals``); these counters are one process's own share,
exactly, from its first acquisition (a forked child starts from zero), plus
what only a process can see: its leases found lost. A metrics exporter in the
process reads them with :func:`snapshot`. Counting is a few integer additions
under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from sluice import _fork
from sluice.limits.model import WAIT_BUCKETS, wait_bucket

__all__ = [
    "WAIT_BUCKETS",
    "LimitCounters",
    "record_grant",
    "record_lost",
    "record_timeout",
    "snapshot",
]


@dataclass(frozen=True)
class LimitCounters:
    """This process's counts for one limit since it started counting."""

    limit: str
    grants: int = 0
    """Acquisitions granted on this limit (concurrency and rate)."""
    granted_units: int = 0
    """Units granted: the sum of ``occupy`` over those grants."""
    timeouts: int = 0
    """Acquisitions that gave up with AcquireTimeout while queued behind this limit."""
    leases_lost: int = 0
    """Leases on this limit found lost: expired (not renewed in time) or revoked (reset, delete)."""
    wait_buckets: tuple[int, ...] = (0,) * (len(WAIT_BUCKETS) + 1)
    """Grants per wait-time bucket (not cumulative): one per bound, then the overflow."""
    wait_sum: float = 0.0
    """Seconds waited, summed over grants."""


@dataclass
class _Tally:
    grants: int = 0
    granted_units: int = 0
    timeouts: int = 0
    leases_lost: int = 0
    wait_buckets: list[int] = field(default_factory=lambda: [0] * (len(WAIT_BUCKETS) + 1))
    wait_sum: float = 0.0


_lock = threading.Lock()
_tallies: dict[str, _Tally] = {}


def _tally(name: str) -> _Tally:
    tally = _tallies.get(name)
    if tally is None:
        tally = _tallies[name] = _Tally()
    return tally


def record_grant(names: Iterable[str], occupy: int, waited: float) -> None:
    """Count one grant of ``occupy`` units on each of ``names`` after ``waited`` seconds."""
    bucket = wait_bucket(waited)
    with _lock:
        for name in names:
            tally = _tally(name)
            tally.grants += 1
            tally.granted_units += occupy
            tally.wait_buckets[bucket] += 1
            tally.wait_sum += waited


def record_timeout(blocked_on: str) -> None:
    """Count one acquisition that timed out while queued behind ``blocked_on``."""
    with _lock:
        _tally(blocked_on).timeouts += 1


def record_lost(names: Iterable[str]) -> None:
    """Count one lease, on each of ``names``, found lost."""
    with _lock:
        for name in names:
            _tally(name).leases_lost += 1


def snapshot() -> list[LimitCounters]:
    """This process's counters, one entry per limit it has used, sorted by name."""
    with _lock:
        return [
            LimitCounters(
                name,
                t.grants,
                t.granted_units,
                t.timeouts,
                t.leases_lost,
                tuple(t.wait_buckets),
                t.wait_sum,
            )
            for name, t in sorted(_tallies.items())
        ]


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _tallies.clear()  # a child counts its own acquisitions only


_fork.after_fork_in_child(_reset_after_fork)
