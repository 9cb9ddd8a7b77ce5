"""Each limit's totals, counted on its row inside the steps that cause them, and read back."""

from __future__ import annotations

from collections.abc import Iterable

from sluice.limits.model import WAIT_BUCKETS, LimitTotals, wait_bucket
from sluice.store.sqlite.tx import Tx

__all__ = ["count_reclaimed", "count_wait", "read_totals"]


def count_wait(tx: Tx, limit_id: int, waited: float) -> None:
    """Add a queued grant's wait to the limit's histogram of queued waits."""
    row = tx.one("SELECT queued_waits FROM sluice_limits WHERE id = ?", (limit_id,))
    waits = [int(n) for n in str(row[0] if row else "").split(",") if n]
    waits += [0] * (len(WAIT_BUCKETS) + 1 - len(waits))
    waits[wait_bucket(waited)] += 1
    tx.run(
        "UPDATE sluice_limits SET queued_waits = ?, wait_seconds = wait_seconds + ? WHERE id = ?",
        (",".join(map(str, waits)), waited, limit_id),
    )


def read_totals(tx: Tx, limit_id: int) -> LimitTotals:
    """The limit's totals as its row keeps them."""
    row = tx.one(
        "SELECT grants, granted_units, timeouts, reclaimed, queued_waits, wait_seconds"
        " FROM sluice_limits WHERE id = ?",
        (limit_id,),
    )
    if row is None:
        return LimitTotals()
    waits = [int(n) for n in str(row[4]).split(",") if n]
    return LimitTotals.from_store(row[0], row[1], row[2], row[3], waits, row[5])


def count_reclaimed(tx: Tx, limit_ids: Iterable[int]) -> None:
    """Count one expired (or dead process's) lease reclaimed on each of these limits."""
    for limit_id in limit_ids:
        tx.run("UPDATE sluice_limits SET reclaimed = reclaimed + 1 WHERE id = ?", (limit_id,))
