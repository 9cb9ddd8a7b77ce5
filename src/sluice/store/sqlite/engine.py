"""The decision logic of the SQLite-dialect stores (SQLite file and memory), once.

Every method here runs inside one open write transaction (a :class:`Tx`) and
decides: grant, queue, hand freed units to waiters in FIFO order, reclaim what
expired or died. Units held are never counters: a limit's in_use is the sum of
its holdings rows, so no admin action can leave a count wrong. The few things
that depend on where the store lives (are other processes alive, how to wake
them) are hooks that :class:`~sluice.store.sqlite.store.SQLiteStore` and
:class:`~sluice.store.sqlite.memory.MemoryStore` provide.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence

from sluice.errors import InvalidRequest, LimitNotFound
from sluice.limits import gcra
from sluice.limits.model import (
    DEFAULT_LEASE_TTL,
    Kind,
)
from sluice.store.base import AcquireRequest, Granted, Queued
from sluice.store.sqlite.ipc import ProcessInfo
from sluice.store.sqlite.totals import count_reclaimed, count_wait
from sluice.store.sqlite.tx import (
    HAS_RETURNING,
    LIMIT_COLUMNS,
    PREFIXED_COLUMNS,
    Claim,
    LimitRow,
    Tx,
    chunks,
    id_list,
    marks,
)

__all__ = ["SQLiteEngine"]


def _impossible(claim: Claim, active: Sequence[LimitRow]) -> bool:
    """Whether no amount of waiting can serve this claim on these limits as they are now."""
    for row in active:
        if claim.kind is Kind.RATE and row.rate is None:
            return True
        bound = row.to_limit().max_occupy(claim.kind)
        if bound is not None and claim.occupy > bound:
            return True
    return False


class SQLiteEngine:
    """Grant, queue, hand-off and reclaim steps over the SQLite schema, inside a Tx."""

    _process: ProcessInfo | None

    # Hooks: where the store lives decides these.

    def _dead_processes(self, tx: Tx, process_ids: Collection[str]) -> set[str]:
        """Which of these processes are known to be gone (they and their rows go)."""
        raise NotImplementedError

    def _gone(self, process_id: str, host: str) -> bool:
        """Whether one registered process is known to be gone."""
        raise NotImplementedError

    def _watch(self, ticket_id: str, pids: Collection[int]) -> None:
        """Wake a ticket when any of these local processes exits."""
        raise NotImplementedError

    def _unwatch(self, ticket_id: str) -> None:
        """Stop waking a ticket on process exits."""
        raise NotImplementedError

    def _deliver(self, tx: Tx, wakes: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
        """Resolve other processes' tickets to wake into (address, tickets) pairs."""
        raise NotImplementedError

    def _limit_rows(self, tx: Tx, names: Sequence[str]) -> dict[str, LimitRow]:
        """The named limits, each with its queue head's seq and units in use."""
        rows = tx.all(
            f"SELECT {LIMIT_COLUMNS},"
            " (SELECT MIN(seq) FROM sluice_queue q WHERE q.limit_id = l.id),"
            " (SELECT COALESCE(SUM(units), 0) FROM sluice_holdings h WHERE h.limit_id = l.id)"
            f" FROM sluice_limits l WHERE name IN ({marks(len(names))})",
            names,
        )
        return {str(r[1]): LimitRow(*r) for r in rows}

    def _limit_row(self, tx: Tx, name: str) -> LimitRow:
        row = tx.one(f"SELECT {LIMIT_COLUMNS} FROM sluice_limits WHERE name = ?", (name,))
        if row is None:
            raise LimitNotFound([name])
        return LimitRow(*row)

    def _collect(self, tx: Tx, request_id: str, missing: tuple[str, ...]) -> Granted | None:
        """The grant a release handed to this request while it slept, if any."""
        row = tx.one(
            "SELECT names, kind, acquired_at, expires_at, lease_ttl FROM sluice_leases"
            " WHERE id = ?",
            (request_id,),
        )
        if row is None:
            return None
        if row[1] == Kind.CONCURRENCY.value and float(row[3]) <= tx.now:
            # Handed over, but its waiter was away past the lease's TTL: the units
            # go back and the waiter queues again at its old place.
            self._revoke(tx, [request_id], expired=True)
            return None
        self._unwatch(request_id)
        names = tuple(n for n in str(row[0]).split(",") if n)
        if row[1] == Kind.RATE.value:
            tx.run("DELETE FROM sluice_leases WHERE id = ?", (request_id,))
            return Granted(None, names, float(row[2]), None, None, missing)
        return Granted(request_id, names, float(row[2]), float(row[3]), float(row[4]), missing)

    def _check_request(self, request: AcquireRequest, active: list[LimitRow]) -> None:
        for row in active:
            if request.kind is Kind.RATE and row.rate is None:
                raise InvalidRequest(
                    f"rate_limit() on limit {row.name!r}, which has no rate; "
                    "give it one with update(rate=...) or use concurrency()"
                )
            bound = row.to_limit().max_occupy(request.kind)
            if bound is not None and request.occupy > bound:
                what = "slots" if bound == row.slots else "burst"
                raise InvalidRequest(
                    f"occupy={request.occupy} can never be met by limit {row.name!r} "
                    f"({what}={bound}); ask for at most {bound}"
                )

    def _blockers(
        self, tx: Tx, kind: Kind, occupy: int, active: list[LimitRow], seq: int | None
    ) -> list[tuple[LimitRow, str]]:
        """Each active limit that refuses the request now, with why: queue, slots or rate."""
        blocked: list[tuple[LimitRow, str]] = []
        for row in active:
            if row.head_seq is not None and (seq is None or row.head_seq < seq):
                blocked.append((row, "queue"))
            elif (
                kind is Kind.CONCURRENCY
                and row.slots is not None
                and (row.in_use + occupy > row.slots)
            ):
                blocked.append((row, "slots"))
            elif (
                row.rate is not None
                and row.burst is not None
                and gcra.allow_at(row.tat, row.rate, row.burst, occupy) > tx.now
            ):
                blocked.append((row, "rate"))
        return blocked

    def _take(
        self,
        tx: Tx,
        claim: Claim,
        active: list[LimitRow],
        missing: tuple[str, ...],
        record_rate: bool,
        queued_since: float | None = None,
    ) -> Granted:
        """Take the claim's tokens and units on every active limit, count the grant in
        their totals, and record its lease.

        A rate grant is recorded only when handed to a sleeping waiter
        (``record_rate``), for it to collect; otherwise it leaves nothing behind.
        ``queued_since`` is when the claim's ticket was created, if it queued.
        """
        for row in active:
            if row.rate is not None and row.burst is not None:
                decision = gcra.decide(row.tat, tx.now, row.rate, row.burst, claim.occupy)
                tx.run(
                    "UPDATE sluice_limits SET tat = ?, grants = grants + 1,"
                    " granted_units = granted_units + ? WHERE id = ?",
                    (decision.tat, claim.occupy, row.id),
                )
            else:
                tx.run(
                    "UPDATE sluice_limits SET grants = grants + 1,"
                    " granted_units = granted_units + ? WHERE id = ?",
                    (claim.occupy, row.id),
                )
            if queued_since is not None:
                count_wait(tx, row.id, max(tx.now - queued_since, 0.0))
        names = tuple(r.name for r in active)
        if claim.kind is Kind.RATE and not record_rate:
            return Granted(None, names, tx.now, None, None, missing)
        ttl = min((r.lease_ttl for r in active), default=DEFAULT_LEASE_TTL)
        expires = tx.now + ttl
        holdings = []
        if claim.kind is Kind.CONCURRENCY:
            holdings = [(r.id, claim.id, claim.occupy) for r in active if r.slots is not None]
        tx.run(
            "INSERT INTO sluice_leases (id, limit_ids, names, kind, process_id, holder, host, pid,"
            " occupy, lease_ttl, acquired_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                claim.id,
                ",".join(str(h[0]) for h in holdings),
                ",".join(names),
                claim.kind.value,
                claim.process_id,
                claim.holder,
                claim.host,
                claim.pid,
                claim.occupy,
                ttl,
                tx.now,
                expires,
            ),
        )
        for holding in holdings:
            tx.run(
                "INSERT INTO sluice_holdings (limit_id, lease_id, units) VALUES (?, ?, ?)", holding
            )
        if claim.kind is Kind.RATE:
            return Granted(None, names, tx.now, None, None, missing)
        return Granted(claim.id, names, tx.now, expires, ttl, missing)

    def _queue(
        self,
        tx: Tx,
        request: AcquireRequest,
        active: list[LimitRow],
        missing: tuple[str, ...],
        me: ProcessInfo,
        seq: int | None,
        has_ticket: bool,
        blocked: list[tuple[LimitRow, str]],
    ) -> Queued:
        ttl = min(r.lease_ttl for r in active)
        expires = tx.now + ttl
        rows = [(r.id, request.request_id, request.occupy, request.kind.value) for r in active]
        if has_ticket:
            assert seq is not None
            tx.run(
                "UPDATE sluice_tickets SET expires_at = ?, limit_count = ? WHERE id = ?",
                (expires, len(active), request.request_id),
            )
            # It waits in the queues of exactly the active limits it names, now.
            tx.run(
                "DELETE FROM sluice_queue WHERE ticket_id = ?"
                f" AND limit_id NOT IN ({marks(len(active))})",
                [request.request_id, *(r.id for r in active)],
            )
            verb = "INSERT OR IGNORE"
        else:
            seq = tx.conn.execute(
                "INSERT INTO sluice_tickets (seq, id, process_id, holder, host, pid, occupy, kind,"
                " names, limit_count, lease_ttl, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,  # None: the next in arrival order; else the place it had
                    request.request_id,
                    me.id,
                    request.holder,
                    me.host,
                    me.pid,
                    request.occupy,
                    request.kind.value,
                    ",".join(request.names),
                    len(active),
                    ttl,
                    tx.now,
                    expires,
                ),
            ).lastrowid
            assert seq is not None
            verb = "INSERT"
        tx.conn.executemany(
            f"{verb} INTO sluice_queue (limit_id, seq, ticket_id, occupy, kind)"
            " VALUES (?, ?, ?, ?, ?)",
            [(limit_id, seq, *rest) for limit_id, *rest in rows],
        )
        first, _why = blocked[0]
        position = self._position(tx, first.id, seq)
        retry_in, watch = self._next_silent_change(tx, request, blocked, seq, me)
        if watch:
            self._watch(request.request_id, watch)
        return Queued(request.request_id, seq, first.name, position, retry_in, ttl, missing)

    def _position(self, tx: Tx, limit_id: int, seq: int) -> int:
        row = tx.one(
            "SELECT COUNT(*) FROM sluice_queue WHERE limit_id = ? AND seq < ?", (limit_id, seq)
        )
        assert row is not None
        return int(row[0]) + 1

    def _next_silent_change(
        self,
        tx: Tx,
        request: AcquireRequest,
        blocked: list[tuple[LimitRow, str]],
        seq: int,
        me: ProcessInfo,
    ) -> tuple[float | None, set[int]]:
        """When something that sends no wake-up (a token, an expiry) may let us in, and
        which local processes' exits should wake us."""
        times: list[float] = []
        pids: set[int] = set()
        for row, why in blocked:
            if why == "rate" and row.rate is not None and row.burst is not None:
                times.append(gcra.allow_at(row.tat, row.rate, row.burst, request.occupy))
                continue
            # Per process, not per ticket or lease: queues can be long, processes few.
            if why == "queue":
                ahead = tx.all(
                    "SELECT MIN(t.expires_at), t.pid, t.host, t.process_id FROM sluice_queue q"
                    " JOIN sluice_tickets t ON t.id = q.ticket_id"
                    " WHERE q.limit_id = ? AND q.seq < ? GROUP BY t.process_id",
                    (row.id, seq),
                )
            else:
                ahead = tx.all(
                    "SELECT MIN(l.expires_at), l.pid, l.host, l.process_id"
                    " FROM sluice_holdings h JOIN sluice_leases l ON l.id = h.lease_id"
                    " WHERE h.limit_id = ? GROUP BY l.process_id",
                    (row.id,),
                )
            for expires_at, pid, host, process_id in ahead:
                times.append(float(expires_at))
                if host == me.host and process_id != me.id:
                    pids.add(int(pid))
        if not times:
            return None, pids
        return max(0.001, min(times) - tx.now), pids

    def _release_one(self, tx: Tx, lease_id: str) -> bool:
        if HAS_RETURNING:
            row = tx.one(
                "DELETE FROM sluice_leases WHERE id = ? RETURNING expires_at, limit_ids",
                (lease_id,),
            )
        else:
            row = tx.one(
                "SELECT expires_at, limit_ids FROM sluice_leases WHERE id = ?", (lease_id,)
            )
            if row is not None:
                tx.run("DELETE FROM sluice_leases WHERE id = ?", (lease_id,))
        if row is None:
            return False
        self._delete_holdings(tx, lease_id, row[1])
        if float(row[0]) > tx.now:
            return True
        count_reclaimed(tx, id_list(row[1]))  # released too late: it had expired
        return False

    def _lease_ids_on(self, tx: Tx, limit_id: int) -> list[str]:
        return [
            str(r[0])
            for r in tx.all("SELECT lease_id FROM sluice_holdings WHERE limit_id = ?", (limit_id,))
        ]

    def _revoke(self, tx: Tx, lease_ids: Iterable[str], expired: bool = False) -> None:
        """Delete leases and every unit they hold, marking their limits for wake-ups.

        ``expired``: they are reclaimed because they expired or their process
        died, which the totals of the limits they held count.
        """
        ids = list(lease_ids)
        for chunk in chunks(ids):
            qs = marks(len(chunk))
            for lease_id, limit_ids in tx.all(
                f"SELECT id, limit_ids FROM sluice_leases WHERE id IN ({qs})", chunk
            ):
                self._delete_lease(tx, lease_id, limit_ids)
                if expired:
                    count_reclaimed(tx, id_list(limit_ids))

    def _delete_lease(self, tx: Tx, lease_id: str, limit_ids: str) -> None:
        self._delete_holdings(tx, lease_id, limit_ids)
        tx.run("DELETE FROM sluice_leases WHERE id = ?", (lease_id,))

    def _delete_holdings(self, tx: Tx, lease_id: str, limit_ids: str) -> None:
        """Give back the units a lease holds, by primary key, marking the limits touched."""
        for limit_id in id_list(limit_ids):
            tx.run(
                "DELETE FROM sluice_holdings WHERE limit_id = ? AND lease_id = ?",
                (limit_id, lease_id),
            )
            tx.touched.add(limit_id)

    def _drop_ticket(self, tx: Tx, ticket_id: str, limit_ids: list[int] | None = None) -> bool:
        """Withdraw a ticket from every queue it is in; False if there was none."""
        if limit_ids is None:
            limit_ids = [
                int(r[0])
                for r in tx.all(
                    "SELECT limit_id FROM sluice_queue WHERE ticket_id = ?", (ticket_id,)
                )
            ]
        if not tx.run("DELETE FROM sluice_tickets WHERE id = ?", (ticket_id,)) and not limit_ids:
            return False
        tx.run("DELETE FROM sluice_queue WHERE ticket_id = ?", (ticket_id,))
        ids = limit_ids
        tx.touched.update(ids)
        tx.moved.update(ids)
        return True

    def _reclaim(self, tx: Tx, limit_ids: Sequence[int]) -> bool:
        """Remove expired leases and tickets, and those of dead local processes, on these limits."""
        if not limit_ids:
            return False
        qs = marks(len(limit_ids))
        leases = tx.all(
            "SELECT l.id, l.expires_at, l.process_id FROM sluice_holdings h"
            f" JOIN sluice_leases l ON l.id = h.lease_id WHERE h.limit_id IN ({qs})",
            limit_ids,
        )
        tickets = tx.all(
            "SELECT t.id, t.expires_at, t.process_id FROM sluice_queue q"
            f" JOIN sluice_tickets t ON t.id = q.ticket_id WHERE q.limit_id IN ({qs})",
            limit_ids,
        )
        me = self._process.id if self._process is not None else None
        owners = {str(r[2]) for r in (*leases, *tickets)} - {me}
        dead = self._dead_processes(tx, owners) if owners else set()
        expired_leases = {str(r[0]) for r in leases if float(r[1]) <= tx.now or r[2] in dead}
        expired_tickets = {str(r[0]) for r in tickets if float(r[1]) <= tx.now or r[2] in dead}
        for process_id in dead:
            self._forget_process(tx, process_id)
        self._revoke(tx, expired_leases, expired=True)
        for tid in expired_tickets:
            self._drop_ticket(tx, tid)
        return bool(dead or expired_leases or expired_tickets)

    def _forget_process(self, tx: Tx, process_id: str, died: bool = True) -> None:
        """Drop every lease and ticket of a process that is gone, and its row.

        ``died``: found gone (its leases count as reclaimed), not closing itself.
        """
        self._revoke(
            tx,
            [
                str(r[0])
                for r in tx.all("SELECT id FROM sluice_leases WHERE process_id = ?", (process_id,))
            ],
            expired=died,
        )
        for (tid,) in tx.all("SELECT id FROM sluice_tickets WHERE process_id = ?", (process_id,)):
            self._drop_ticket(tx, str(tid))
        tx.run("DELETE FROM sluice_processes WHERE id = ?", (process_id,))

    def _hand_off(self, tx: Tx) -> tuple[list[tuple[str, list[str]]], list[str]]:
        """Grant waiting tickets that fit now, in arrival order, and say whom to wake.

        Runs at the end of every step that changed a limit's capacity or queue.
        On each such limit, the head ticket is granted if it can be on every
        limit it waits for (it heads each of those queues too, and units and
        tokens suffice); then the next, and so on, stopping at the first that
        cannot be served: strict FIFO, with no capacity left idle while the
        head could use it. Granted tickets are woken to collect their grant; a
        head left waiting is woken when it changed, to learn when its next rate
        token or silent expiry is due.
        """
        wakes: dict[str, str] = dict(tx.wake_tickets)  # ticket -> process
        me = self._process.id if self._process is not None else None
        work = sorted(tx.touched | tx.moved)
        done: set[int] = set()
        while work:
            limit_id = work.pop(0)
            if limit_id in done:
                continue
            done.add(limit_id)
            granted_here = False
            while True:
                head = tx.one(
                    "SELECT t.id, t.seq, t.process_id, t.holder, t.host, t.pid, t.occupy, t.kind,"
                    f" t.limit_count, {PREFIXED_COLUMNS},"
                    " (SELECT COALESCE(SUM(units), 0) FROM sluice_holdings h"
                    "  WHERE h.limit_id = q.limit_id), t.created_at"
                    " FROM sluice_queue q JOIN sluice_tickets t ON t.id = q.ticket_id"
                    " JOIN sluice_limits l ON l.id = q.limit_id"
                    " WHERE q.limit_id = ? ORDER BY q.seq LIMIT 1",
                    (limit_id,),
                )
                if head is None:
                    break
                ticket_id, seq, process_id = str(head[0]), int(head[1]), str(head[2])
                claim = Claim(
                    ticket_id, process_id, head[3], head[4], head[5], head[6], Kind(head[7])
                )
                # This limit, whose queue the ticket heads.
                here = LimitRow._make((*head[9:17], seq, head[17]))
                if (
                    here.active
                    and claim.kind is Kind.CONCURRENCY
                    and here.slots is not None
                    and here.in_use + claim.occupy > here.slots
                ):
                    if limit_id in tx.moved and claim.occupy > here.slots:
                        wakes[ticket_id] = process_id  # slots now below its occupy
                    break  # no room on this limit: the common case, decided in one query
                # A ticket in one queue needs nothing more; one in several, all of them.
                rows = [here] if head[8] == 1 else self._ticket_limits(tx, ticket_id)
                active = [r for r in rows if r.active]
                if _impossible(claim, active):
                    wakes[ticket_id] = process_id  # its retry says why, and leaves the queue
                    break
                blocked = self._blockers(tx, claim.kind, claim.occupy, active, seq)
                if blocked:
                    # A new head waiting for a rate token must learn when it is due,
                    # and one that a change made impossible (slots or burst now below
                    # its occupy, rate removed) must learn it at once and leave the
                    # queue; one waiting for units is served here when they free up.
                    new_head = granted_here or limit_id in tx.moved
                    if new_head and (
                        any(why == "rate" for _, why in blocked) or _impossible(claim, active)
                    ):
                        wakes[ticket_id] = process_id
                    break
                if process_id != me and process_id not in tx.alive:
                    if self._gone(process_id, claim.host):
                        self._forget_process(tx, process_id)  # never hand units to the dead
                        continue
                    tx.alive.add(process_id)
                self._drop_ticket(tx, ticket_id, [r.id for r in rows])
                self._take(tx, claim, active, (), record_rate=True, queued_since=head[18])
                wakes[ticket_id] = process_id
                granted_here = True
                if (
                    here.active
                    and here.rate is None
                    and here.slots is not None
                    and claim.kind is Kind.CONCURRENCY
                    and here.in_use + claim.occupy >= here.slots
                ):
                    # Full now, and no rate token for a new head to wait on: done here.
                    work.extend(r.id for r in rows if r.id != limit_id)
                    done.difference_update(r.id for r in rows if r.id != limit_id)
                    break
                work.extend(r.id for r in rows if r.id != limit_id)  # their queues moved too
                done.difference_update(r.id for r in rows if r.id != limit_id)
        by_process: dict[str, list[str]] = defaultdict(list)
        for ticket_id, process_id in wakes.items():
            by_process[process_id].append(ticket_id)
        local = by_process.pop(me, []) if me is not None else []
        targets = self._deliver(tx, by_process) if by_process else []
        return targets, local

    def _join_waiters(self, tx: Tx, limit_id: int, name: str) -> None:
        """Queue on a limit that now counts (enabled, or created) every waiter naming it.

        They asked for it while it was inactive or missing; from now on they wait
        for it too, at the place their arrival gives them.
        """
        tickets = tx.all(
            "SELECT id, seq, occupy, kind FROM sluice_tickets"
            " WHERE instr(',' || names || ',', ',' || ? || ',') > 0",
            (name,),
        )
        for ticket_id, seq, occupy, kind in tickets:
            if tx.run(
                "INSERT OR IGNORE INTO sluice_queue (limit_id, seq, ticket_id, occupy, kind)"
                " VALUES (?, ?, ?, ?, ?)",
                (limit_id, seq, ticket_id, occupy, kind),
            ):
                tx.run(
                    "UPDATE sluice_tickets SET limit_count = limit_count + 1 WHERE id = ?",
                    (ticket_id,),
                )
                tx.moved.add(limit_id)

    def _ticket_limits(self, tx: Tx, ticket_id: str) -> list[LimitRow]:
        """The limits a ticket waits on, each with its queue head and units in use."""
        rows = tx.all(
            f"SELECT {PREFIXED_COLUMNS},"
            " (SELECT MIN(seq) FROM sluice_queue q2 WHERE q2.limit_id = l.id),"
            " (SELECT COALESCE(SUM(units), 0) FROM sluice_holdings h WHERE h.limit_id = l.id)"
            " FROM sluice_queue q JOIN sluice_limits l ON l.id = q.limit_id"
            " WHERE q.ticket_id = ? ORDER BY l.name",
            (ticket_id,),
        )
        return [LimitRow(*r) for r in rows]
