"""Rate math: the generic cell rate algorithm (GCRA), as pure functions.

A rate limit of ``rate`` units per second with a bucket of ``burst`` units is
tracked by one number, the theoretical arrival time ``tat``: the instant at
which the bucket would be full again if nothing more were taken. Taking ``n``
units at time ``now`` is allowed when::

    max(tat, now) + n / rate - now <= burst / rate

and moves ``tat`` to ``max(tat, now) + n / rate``. Over any window of ``w``
seconds this admits at most ``burst + rate * w`` units, and under saturation
it admits exactly ``rate`` units per second. A fresh bucket has ``tat = 0``
(full). Times are the store's clock, in seconds.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Decision", "allow_at", "decide", "next_token_in"]


class Decision(NamedTuple):
    """The outcome of asking for ``n`` units: granted now, or the wait until it would be."""

    granted: bool
    tat: float
    wait: float


def allow_at(tat: float, rate: float, burst: int, n: int = 1) -> float:
    """The earliest store time at which ``n`` units (``n <= burst``) can be taken."""
    return tat + (n - burst) / rate


def decide(tat: float, now: float, rate: float, burst: int, n: int = 1) -> Decision:
    """Take ``n`` units at ``now`` if the bucket allows, returning the new ``tat``.

    When refused, ``tat`` is unchanged and ``wait`` is the number of seconds
    until the units are due (computed, not guessed). ``n`` must not exceed
    ``burst``: such a request can never be met, and callers reject it first.
    """
    if n > burst:
        raise ValueError(f"n={n} exceeds burst={burst}; such a request can never be met")
    due = allow_at(tat, rate, burst, n)
    if now >= due:
        return Decision(True, max(tat, now) + n / rate, 0.0)
    return Decision(False, tat, due - now)


def next_token_in(tat: float, now: float, rate: float, burst: int) -> float:
    """Seconds until one unit is available (0.0 if one is available now)."""
    return max(0.0, allow_at(tat, rate, burst, 1) - now)
