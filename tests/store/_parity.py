"""Random exchange sequences run on the SQLite reference and on PostgreSQL side by side.

Two processes (two store objects per backend) send the same random batches
(requests with counts, joins, missing names and impossible sizes; releases;
withdrawals with timeouts; asks; renewals) and an administrator changes slots,
enables, disables and resets, all on limits with slots only (rate tokens and
expiries depend on the clock). After each step the answers and the tables
(holders with their claim, tickets with what they want and whether they are
stalled, totals) must be the same on both: lease names included, since both
number grants with a store-wide fence and tickets with a store-wide seq.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import psycopg

from sluice import Limits
from sluice.limits.model import Kind, MissingPolicy
from sluice.store import BACKENDS, canonical_url
from sluice.store.base import AcquireRequest, Ask, Exchange, Exchanged, Store, Withdrawal

__all__ = ["Parity"]

NAMES = ("x", "y", "z")


def open_store(url: str) -> Store:
    """A store object of its own: its own process id."""
    key = canonical_url(url)
    module, _, attr = BACKENDS[key.split("://", 1)[0]].store.partition(":")
    store: Store = getattr(__import__(module, fromlist=[attr]), attr)(key)
    return store


def _answer(answer: Exchanged) -> tuple[Any, ...]:
    return (
        dict(sorted(answer.released.items())),
        [(g.lease_id, g.names, g.ticket_id, g.missing) for g in answer.grants],
        {
            k: (q.seq, q.blocked_on, q.position, q.wanted, q.missing, q.retry_in is None)
            for k, q in sorted(answer.queued.items())
        },
        {k: (type(e).__name__, str(e)) for k, e in sorted(answer.refused.items())},
        dict(sorted(answer.joined.items())),
        dict(sorted(answer.missing.items())),
    )


_LIMIT = "SELECT id, slots, active, grants, timeouts, reclaimed FROM {limits} WHERE name = {p}"
_HOLDERS = (
    "SELECT l.id, h.units, l.claimed FROM {holdings} h JOIN {leases} l ON l.id = h.lease_id"
    " WHERE h.limit_id = {p}"
)
_WAITERS = (
    "SELECT t.id, q.occupy, t.wanted, q.stalled FROM {queue} q"
    " JOIN {tickets} t ON t.id = q.ticket_id WHERE q.limit_id = {p} ORDER BY q.seq"
)


def _tables(query: Any, names: dict[str, str]) -> list[tuple[Any, ...]]:
    """What the tables hold, read without a step (nothing reclaimed, nothing handed off)."""
    out = []
    for name in NAMES:
        lid, slots, active, grants, timeouts, reclaimed = query(_LIMIT.format(**names), name)[0]
        holders = sorted(
            (str(a), int(b), bool(c)) for a, b, c in query(_HOLDERS.format(**names), lid)
        )
        waiters = [
            (str(a), int(b), int(c), bool(d)) for a, b, c, d in query(_WAITERS.format(**names), lid)
        ]
        out.append((name, slots, bool(active), grants, timeouts, reclaimed, holders, waiters))
    return out


@dataclass
class Parity:
    """One SQLite file and one PostgreSQL schema, driven alike."""

    sqlite_path: str
    pg_dsn: str
    schema: str
    stores: dict[str, tuple[Store, Store]] = field(default_factory=dict)
    admins: dict[str, Limits] = field(default_factory=dict)
    _readers: tuple[sqlite3.Connection, psycopg.Connection[Any]] = field(init=False)

    def __post_init__(self) -> None:
        urls = {
            "sqlite": f"sqlite:///{self.sqlite_path}",
            "postgres": f"{self.pg_dsn}?schema={self.schema}",
        }
        for kind, url in urls.items():
            self.stores[kind] = (open_store(url), open_store(url))
            self.admins[kind] = Limits(url)
            self.admins[kind].create("x", slots=3)
            self.admins[kind].create("y", slots=2)
            self.admins[kind].create("z", slots=4)
        self._readers = (
            sqlite3.connect(self.sqlite_path, isolation_level=None),
            psycopg.connect(self.pg_dsn, autocommit=True),
        )

    def close(self) -> None:
        for kind, (a, b) in self.stores.items():
            a.close()
            b.close()
            self.admins[kind].close()
        for reader in self._readers:
            reader.close()

    def tables(self) -> dict[str, list[tuple[Any, ...]]]:
        """Both stores' tables, side by side."""
        tables = ("limits", "holdings", "leases", "queue", "tickets")
        lite, pg = self._readers
        return {
            "sqlite": _tables(
                lambda sql, p: lite.execute(sql, (p,)).fetchall(),
                {"p": "?", **{t: f"sluice_{t}" for t in tables}},
            ),
            "postgres": _tables(
                lambda sql, p: pg.execute(sql, (p,)).fetchall(),
                {"p": "%s", **{t: f'"{self.schema}".{t}' for t in tables}},
            ),
        }

    def run(self, seed: int, steps: int) -> list[str]:
        """Drive both stores alike; the differences found (none: the same semantics)."""
        rng = random.Random(seed)
        held: dict[int, list[str]] = {0: [], 1: []}
        tickets: dict[int, list[AcquireRequest]] = {0: [], 1: []}
        seqs: dict[str, int] = {}
        ids = iter(range(10**9))
        for step in range(steps):
            proc = rng.randrange(2)
            op = rng.random()
            batch: Exchange | None = None
            admin: tuple[Any, ...] | None = None
            if op < 0.35:
                names = tuple(sorted(rng.sample([*NAMES, "ghost"], rng.choice([1, 1, 1, 2]))))
                holder, occupy = rng.choice(["h1", "h2"]), rng.choice([1, 1, 1, 2, 5])
                missing: MissingPolicy = rng.choice(["raise", "ignore"])
                same = [
                    t.request_id
                    for t in tickets[proc]
                    if (t.names, t.holder, t.occupy) == (names, holder, occupy)
                ]
                join = same[-1] if same and rng.random() < 0.5 else None
                request = AcquireRequest(
                    f"s{seed}r{next(ids)}",
                    names,
                    occupy,
                    Kind.CONCURRENCY,
                    holder,
                    missing,
                    rng.choice([1, 1, 2, 3]),
                    join,
                )
                batch = Exchange(requests=(request,))
            elif op < 0.6 and held[proc]:
                releases = rng.sample(held[proc], rng.randrange(1, min(3, len(held[proc])) + 1))
                batch = Exchange(releases=tuple(releases))
            elif op < 0.72 and tickets[proc]:
                ticket = rng.choice(tickets[proc])
                withdrawal = Withdrawal(
                    ticket.request_id, rng.choice([None, 1, 2]), rng.choice([None, "x"])
                )
                batch = Exchange(withdrawals=(withdrawal,))
            elif op < 0.88 and tickets[proc]:
                t = rng.choice(tickets[proc])
                template = AcquireRequest(
                    t.request_id, t.names, t.occupy, t.kind, t.holder, t.missing
                )
                ask = Ask(t.request_id, template, seqs.get(t.request_id, 0), rng.choice([0, 1, 2]))
                batch = Exchange(asks=(ask,))
            elif op < 0.93:
                admin = ("renew",)
            else:
                action = rng.choice(["slots", "enable", "disable", "reset"])
                admin = (action, rng.choice(NAMES), rng.choice([1, 2, 3, 4, 6]))
            answers = {
                kind: self._do(kind, proc, batch, admin, held, tickets) for kind in self.stores
            }
            if answers["sqlite"] != answers["postgres"]:
                return [f"seed {seed} step {step}: {batch or admin}: {answers}"]
            tables = self.tables()
            if tables["sqlite"] != tables["postgres"]:
                return [f"seed {seed} step {step} after {batch or admin}: {tables}"]
            if batch is not None:
                answer: tuple[Any, ...] = answers["sqlite"]
                for lease_id in batch.releases:
                    held[proc].remove(lease_id)
                held[proc].extend(g[0] for g in answer[1] if g[0])
                tickets[proc].extend(r for r in batch.requests if r.request_id in answer[2])
                seqs.update((t, q[0]) for t, q in answer[2].items())
        return []

    def _do(
        self,
        kind: str,
        proc: int,
        batch: Exchange | None,
        admin: tuple[Any, ...] | None,
        held: dict[int, list[str]],
        tickets: dict[int, list[AcquireRequest]],
    ) -> Any:
        store, limits = self.stores[kind][proc], self.admins[kind]
        if batch is not None:
            return _answer(store.exchange(batch))
        assert admin is not None
        if admin[0] == "renew":
            renewal = store.renew(
                [*held[proc], "gone.1"], [t.request_id for t in tickets[proc]] + ["gone"]
            )
            return (
                sorted(renewal.lost_leases),
                sorted(renewal.lost_tickets),
                sorted(renewal.expires_at),
            )
        action, name, slots = admin
        if action == "slots":
            limits.update(name, slots=slots)
        elif action == "enable":
            limits.enable(name)
        elif action == "disable":
            limits.disable(name)
        else:
            limits.reset(name)
        return None
