"""How a limit's waiters stand: what blocks the head of its queue, and how long grants waited
(percentiles from the store's wait histogram)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sluice.limits.model import WAIT_BUCKETS, LimitStatus, LimitTotals

__all__ = ["HeadOfLine", "Percentile", "head_of_line", "wait_percentiles"]

PERCENTILES = (50, 95, 99)


def _units(n: int) -> str:
    return f"{n} unit{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class HeadOfLine:
    """Why the waiter at the head of a limit's queue is not running, as the sample saw it."""

    kind: str
    """``none`` (nobody waits), ``full`` (no unit free), ``blocked`` (some free, the head
    needs more: head-of-line blocking), ``rate`` (waiting for a rate token), ``other``
    (enough free: a hand-off on its way, or the head waits on another of its limits),
    ``disabled``."""
    free: int | None
    """Units free now (None: the limit has no slots)."""
    head_needs: int | None
    """Units the head waiter asks for (None: nobody waits)."""
    behind: int
    """Requests queued behind the head."""
    text: str

    def to_json(self) -> dict[str, Any]:
        """The fields, for the dashboard's JSON."""
        return {
            "kind": self.kind,
            "free": self.free,
            "head_needs": self.head_needs,
            "behind": self.behind,
            "text": self.text,
        }


def head_of_line(status: LimitStatus) -> HeadOfLine:
    """What holds up the head of the queue: ``1 unit free; the waiter at the head needs 2``."""
    limit = status.limit
    waiting = sum(w.count for w in status.waiters)
    free = None if limit.slots is None else max(limit.slots - status.in_use, 0)
    if not limit.active:
        return HeadOfLine("disabled", free, None, 0, "disabled: it admits everyone at once")
    if not status.waiters:
        return HeadOfLine("none", free, None, 0, "nobody waits")
    head = status.waiters[0]
    behind = waiting - 1
    queue = f"; {behind} more wait behind it" if behind else ""
    if free is not None and free < head.occupy:
        if free == 0:
            text = f"no unit free ({status.in_use} of {limit.slots} in use){queue}"
            return HeadOfLine("full", free, head.occupy, behind, text)
        text = (
            f"{_units(free)} free; the waiter at the head needs {head.occupy}, so it waits "
            f"for more to be released (head-of-line blocking: first come, first served"
            f"{', and ' + str(behind) + ' more wait behind it' if behind else ''})"
        )
        return HeadOfLine("blocked", free, head.occupy, behind, text)
    if status.next_token_in is not None and status.next_token_in > 0:
        text = f"the waiter at the head waits for a rate token, due in {status.next_token_in:.3g} s"
        return HeadOfLine("rate", free, head.occupy, behind, text + queue)
    free_text = "" if free is None else f"{_units(free)} free and "
    text = (
        f"{free_text}the head needs {head.occupy}: its grant is on its way, or it waits on "
        f"another of the limits it asked for{queue}"
    )
    return HeadOfLine("other", free, head.occupy, behind, text)


@dataclass(frozen=True)
class Percentile:
    """A wait percentile as the histogram bounds it: more than ``above``, at most ``upto``."""

    percentile: int
    above: float
    upto: float | None
    """None: in the last, unbounded bucket (longer than the last bound)."""

    def to_json(self) -> dict[str, Any]:
        """``{"percentile", "above", "upto"}``."""
        return {"percentile": self.percentile, "above": self.above, "upto": self.upto}


def wait_percentiles(totals: LimitTotals) -> list[Percentile]:
    """p50, p95 and p99 of the grants' waits, each as the bucket it falls in (empty without
    grants). The store counts waits per bucket, not each wait: a bucket is what is known."""
    total = sum(totals.wait_buckets)
    if total == 0:
        return []
    out = []
    bounds = (*WAIT_BUCKETS, None)
    for p in PERCENTILES:
        rank = p / 100 * total
        seen = 0
        for i, count in enumerate(totals.wait_buckets):
            seen += count
            if seen >= rank and count:
                out.append(Percentile(p, 0.0 if i == 0 else WAIT_BUCKETS[i - 1], bounds[i]))
                break
    return out
