"""The pieces every SQLite step is made of: the open transaction and the rows it reads."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sluice.limits.model import Kind, Limit

__all__ = [
    "HAS_RETURNING",
    "LIMIT_COLUMNS",
    "PREFIXED_COLUMNS",
    "Claim",
    "LimitRow",
    "Tx",
    "chunks",
    "id_list",
    "marks",
]

HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
_CHUNK = 400  # stay well under SQLite's bound-parameter limit


class Claim(NamedTuple):
    """A request as its lease will record it: whose it is and what it takes."""

    id: str
    process_id: str
    holder: str
    host: str
    pid: int
    occupy: int
    kind: Kind


class LimitRow(NamedTuple):
    """A limits-table row, with its queue head and units in use where a query adds them."""

    id: int
    name: str
    slots: int | None
    rate: float | None
    burst: int | None
    active: int
    lease_ttl: float
    tat: float
    head_seq: int | None = None  # filled in by _limit_rows only
    in_use: int = 0

    def to_limit(self) -> Limit:
        return Limit(
            self.name, self.slots, self.rate, self.burst, bool(self.active), self.lease_ttl
        )


LIMIT_COLUMNS = "id, name, slots, rate, burst, active, lease_ttl, tat"
PREFIXED_COLUMNS = ", ".join(f"l.{c}" for c in LIMIT_COLUMNS.split(", "))


@dataclass
class Tx:
    """One open transaction: its cursor, its clock reading and the limits it touched."""

    conn: sqlite3.Connection
    now: float
    touched: set[int] = field(default_factory=set)  # limits whose capacity or queue changed
    moved: set[int] = field(default_factory=set)  # limits whose queue head may have changed
    wake_tickets: dict[str, str] = field(default_factory=dict)  # ticket -> process to wake
    alive: set[str] = field(default_factory=set)  # processes found alive in this step

    def one(self, sql: str, params: Sequence[object] = ()) -> Any:
        """The first row of a query (a tuple), or None."""
        return self.conn.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        """Every row of a query, as tuples."""
        return self.conn.execute(sql, params).fetchall()

    def run(self, sql: str, params: Sequence[object] = ()) -> int:
        return self.conn.execute(sql, params).rowcount


def marks(n: int) -> str:
    """``?,?,?`` for n parameters."""
    return ",".join("?" * n)


def id_list(text: object) -> list[int]:
    """The limit ids of a lease's ``limit_ids`` column."""
    return [int(part) for part in str(text).split(",") if part]


def chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    """Slices small enough to bind as parameters of one statement."""
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
