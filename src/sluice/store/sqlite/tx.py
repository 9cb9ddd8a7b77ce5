"""The pieces every SQLite step is made of: the open transaction and the rows it reads."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sluice.limits.model import Kind, Limit
from sluice.store.base import Granted

__all__ = [
    "HAS_RETURNING",
    "LIMIT_COLUMNS",
    "PREFIXED_COLUMNS",
    "TICKET_COLUMNS",
    "Claim",
    "LimitRow",
    "TicketRow",
    "Tx",
    "arrival_list",
    "arrivals_text",
    "chunks",
    "id_list",
    "marks",
    "take_arrivals",
]

HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
_CHUNK = 400  # stay well under SQLite's bound-parameter limit


class Claim(NamedTuple):
    """A grant about to be made, as its lease will record it: whose it is and what it takes."""

    ticket_id: str
    """The ticket (or request) granted; the lease is named ``<ticket_id>.<fence>``."""
    process_id: str
    holder: str
    host: str
    pid: int
    occupy: int
    kind: Kind
    ticket_seq: int | None = None
    """The ticket's place in line, kept on the lease so a lapsed grant can find it again."""


TICKET_COLUMNS = (
    "seq, id, process_id, holder, host, pid, occupy, kind, names, limit_count, lease_ttl,"
    " created_at, expires_at, wanted, arrivals"
)


class TicketRow(NamedTuple):
    """A tickets-table row: a place in line wanting ``wanted`` grants of one request."""

    seq: int
    id: str
    process_id: str
    holder: str
    host: str
    pid: int
    occupy: int
    kind: str
    names: str
    limit_count: int
    lease_ttl: float
    created_at: float
    expires_at: float
    wanted: int
    arrivals: str

    def claim(self) -> Claim:
        """The grant this ticket's next one would be."""
        return Claim(
            self.id,
            self.process_id,
            self.holder,
            self.host,
            self.pid,
            self.occupy,
            Kind(self.kind),
            self.seq,
        )

    @property
    def name_list(self) -> tuple[str, ...]:
        """Every limit name the ticket's request asked for."""
        return tuple(n for n in self.names.split(",") if n)


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
    caller: str | None = None
    """The process whose exchange this is: hand-offs to its tickets are its grants at once
    (claimed, in ``mine``) instead of waiting to be claimed. None for every other step."""
    mine: list[Granted] = field(default_factory=list)

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


# --------------------------------------------------------------------------- arrivals


def arrival_list(arrivals: str, created_at: float, wanted: int) -> list[tuple[float, int]]:
    """When a ticket's wanted grants arrived, oldest first: ``[(time, count), ...]``."""
    if not arrivals:
        return [(created_at, wanted)] if wanted > 0 else []
    out = []
    for part in arrivals.split(","):
        moment, _, count = part.partition(":")
        out.append((float(moment), int(count)))
    return out


def arrivals_text(segments: list[tuple[float, int]]) -> str:
    """The ``arrivals`` column for these segments (empty when none is left).

    A single segment is written out too: it need not be the ticket's ``created_at``
    (the first arrivals may have been served, leaving a later one).
    """
    kept = [(t, n) for t, n in segments if n > 0]
    if not kept:
        return ""
    return ",".join(f"{t!r}:{n}" for t, n in kept)


def take_arrivals(segments: list[tuple[float, int]], count: int) -> list[tuple[float, int]]:
    """Remove ``count`` from the oldest segments; return what is left."""
    left = list(segments)
    while count > 0 and left:
        moment, n = left[0]
        used = min(n, count)
        count -= used
        left[0] = (moment, n - used)
        if left[0][1] == 0:
            left.pop(0)
    return left


ARRIVALS_JOIN_WINDOW = 0.005
"""Seconds within which requests joining a ticket count as one arrival (fewer segments)."""


def pop_arrival(arrivals: str, created_at: float) -> tuple[float, str]:
    """(when the oldest wanted grant arrived, the column once it is granted); touches only
    the first segment, so a grant costs the same however many segments there are."""
    if not arrivals:
        return created_at, ""
    first, _, rest = arrivals.partition(",")
    moment, _, count = first.partition(":")
    left = int(count) - 1
    if left > 0:
        return float(moment), f"{moment}:{left}" + ("," + rest if rest else "")
    return float(moment), rest


def add_arrivals(arrivals: str, created_at: float, wanted: int, now: float, count: int) -> str:
    """The column once ``count`` more requests arrived at ``now`` (joined to the last
    segment if it arrived within :data:`ARRIVALS_JOIN_WINDOW`)."""
    text = arrivals or (f"{created_at!r}:{wanted}" if wanted > 0 else "")
    if text:
        head, _, last = text.rpartition(",")
        moment, _, n = last.partition(":")
        if now - float(moment) <= ARRIVALS_JOIN_WINDOW:
            return (head + "," if head else "") + f"{moment}:{int(n) + count}"
        return f"{text},{now!r}:{count}"
    return f"{now!r}:{count}"
