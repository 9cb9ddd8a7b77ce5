"""The record of who held each limit's units, and when (table ``sluice_held``).

A claimed lease's units go on record, one row per limit, when the lease ends
(released, reclaimed or revoked). ``run why`` reads it to say who held a limit's
slots while a flow run waited. The newest :data:`HELD_KEEP` rows are kept.
"""

from __future__ import annotations

from sluice.store.sqlite.tx import Tx

__all__ = ["HELD_KEEP", "record_held"]

HELD_KEEP = 1_000_000
"""Rows of sluice_held kept (the newest); older ones are dropped every few thousand."""

_PRUNE_EVERY = 4096


def record_held(
    tx: Tx, lease_id: str, limit_ids: list[int], holder: str, units: int, acquired_at: float
) -> None:
    """Put on record that a lease held ``units`` of each limit from ``acquired_at`` to now."""
    for limit_id in limit_ids:
        row = tx.conn.execute(
            "INSERT INTO sluice_held (limit_id, holder, units, acquired_at, released_at,"
            " lease_id) VALUES (?, ?, ?, ?, ?, ?)",
            (limit_id, holder, units, acquired_at, tx.now, lease_id),
        ).lastrowid
        if row is not None and row % _PRUNE_EVERY == 0:
            tx.run("DELETE FROM sluice_held WHERE rowid <= ?", (row - HELD_KEEP,))
