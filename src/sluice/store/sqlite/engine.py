"""The decision logic of the SQLite-dialect stores (SQLite file and memory), once.

Every method here runs inside one open write transaction (a :class:`Tx`) and
decides: grant, queue, hand freed units to waiting tickets in FIFO order,
reclaim what expired or died. Units held are never counters: a limit's in_use
is the sum of its holdings rows, so no admin action can leave a count wrong.
The few things that depend on where the store lives (are other processes
alive, how to wake them) are hooks that
:class:`~sluice.store.sqlite.store.SQLiteStore` and
:class:`~sluice.store.sqlite.memory.MemoryStore` provide. The step that a
process sends with its batch of work is in :mod:`sluice.store.sqlite.exchange`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence

from sluice.errors import InvalidRequest, LimitNotFound
from sluice.limits import gcra
from sluice.limits.model import DEFAULT_LEASE_TTL, Kind
from sluice.store.base import CLAIM_WINDOW, AcquireRequest, Granted
from sluice.store.sqlite.held import record_held
from sluice.store.sqlite.ipc import ProcessInfo
from sluice.store.sqlite.totals import count_reclaimed, count_wait
from sluice.store.sqlite.tx import (
    HAS_RETURNING,
    LIMIT_COLUMNS,
    PREFIXED_COLUMNS,
    TICKET_COLUMNS,
    Claim,
    LimitRow,
    TicketRow,
    Tx,
    arrival_list,
    arrivals_text,
    chunks,
    id_list,
    marks,
    pop_arrival,
)

__all__ = ["SQLiteEngine"]

_LEASE_COLUMNS = (
    "id, limit_ids, names, kind, process_id, holder, host, pid, occupy, lease_ttl,"
    " acquired_at, expires_at, ticket_id, ticket_seq, claimed"
)


def impossible(kind: Kind, occupy: int, active: Sequence[LimitRow]) -> bool:
    """Whether no amount of waiting can serve this request on these limits as they are now."""
    for row in active:
        if kind is Kind.RATE and row.rate is None:
            return True
        bound = row.to_limit().max_occupy(kind)
        if bound is not None and occupy > bound:
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

    # ------------------------------------------------------------- reading

    def _limit_rows(self, tx: Tx, names: Sequence[str]) -> dict[str, LimitRow]:
        """The named limits, each with its queue head's seq (stalled tickets passed by)
        and units in use."""
        rows = tx.all(
            f"SELECT {LIMIT_COLUMNS},"
            " (SELECT MIN(seq) FROM sluice_queue q WHERE q.limit_id = l.id AND q.stalled = 0),"
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

    def _ticket(self, tx: Tx, ticket_id: str) -> TicketRow | None:
        row = tx.one(f"SELECT {TICKET_COLUMNS} FROM sluice_tickets WHERE id = ?", (ticket_id,))
        return None if row is None else TicketRow(*row)

    def _ticket_limits(self, tx: Tx, ticket_id: str) -> list[LimitRow]:
        """The limits a ticket waits on, each with its queue head and units in use."""
        rows = tx.all(
            f"SELECT {PREFIXED_COLUMNS},"
            " (SELECT MIN(seq) FROM sluice_queue q2 WHERE q2.limit_id = l.id AND q2.stalled = 0),"
            " (SELECT COALESCE(SUM(units), 0) FROM sluice_holdings h WHERE h.limit_id = l.id)"
            " FROM sluice_queue q JOIN sluice_limits l ON l.id = q.limit_id"
            " WHERE q.ticket_id = ? ORDER BY l.name",
            (ticket_id,),
        )
        return [LimitRow(*r) for r in rows]

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

    # ------------------------------------------------------------- granting

    def _next_fence(self, tx: Tx) -> int:
        """The store-wide grant number: every lease's name ends with it."""
        if HAS_RETURNING:
            row = tx.one(
                "UPDATE sluice_meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'fence'"
                " RETURNING value"
            )
        else:
            tx.run("UPDATE sluice_meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'fence'")
            row = tx.one("SELECT value FROM sluice_meta WHERE key = 'fence'")
        return int(row[0])

    def _grant(
        self,
        tx: Tx,
        claim: Claim,
        active: list[LimitRow],
        missing: tuple[str, ...],
        *,
        claimed: bool,
        queued_since: float | None = None,
    ) -> Granted:
        """Take the claim's tokens and units on every active limit, count the grant in
        their totals, and record its lease.

        ``claimed``: the grant goes to the step's caller, whose it is at once (a rate
        grant then leaves nothing behind); otherwise its lease waits to be claimed and
        lapses after :data:`CLAIM_WINDOW`. ``queued_since`` is when the granted
        request arrived, if it queued.
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
        if claim.kind is Kind.RATE and claimed:
            return Granted(None, names, tx.now, None, None, missing, claim.ticket_id)
        lease_id = f"{claim.ticket_id}.{self._next_fence(tx)}"
        ttl = min((r.lease_ttl for r in active), default=DEFAULT_LEASE_TTL)
        expires = tx.now + (ttl if claimed else min(ttl, CLAIM_WINDOW))
        holdings = []
        if claim.kind is Kind.CONCURRENCY:
            holdings = [(r.id, lease_id, claim.occupy) for r in active if r.slots is not None]
        tx.run(
            f"INSERT INTO sluice_leases ({_LEASE_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                lease_id,
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
                claim.ticket_id,
                claim.ticket_seq,
                int(claimed),
            ),
        )
        tx.conn.executemany(
            "INSERT INTO sluice_holdings (limit_id, lease_id, units) VALUES (?, ?, ?)", holdings
        )
        if claim.kind is Kind.RATE:
            return Granted(None, names, tx.now, None, None, missing, claim.ticket_id)
        return Granted(lease_id, names, tx.now, expires, ttl, missing, claim.ticket_id)

    def _grant_to_ticket(
        self, tx: Tx, ticket: TicketRow, active: list[LimitRow], claimed: bool
    ) -> Granted:
        """One grant of a ticket's request; the ticket wants one fewer (and goes at none)."""
        arrived, arrivals = pop_arrival(ticket.arrivals, ticket.created_at)
        granted = self._grant(tx, ticket.claim(), active, (), claimed=claimed, queued_since=arrived)
        if ticket.wanted <= 1:
            self._drop_ticket(tx, ticket.id, [r.id for r in active])
        else:
            tx.run(
                "UPDATE sluice_tickets SET wanted = wanted - 1, arrivals = ? WHERE id = ?",
                (arrivals, ticket.id),
            )
        return granted

    def _serve(self, tx: Tx, ticket: TicketRow, rows: list[LimitRow]) -> list[Granted]:
        """Grant the caller's own ticket as many times as it wants and can be served now."""
        grants: list[Granted] = []
        current: TicketRow | None = ticket
        while current is not None and current.wanted > 0:
            active = [r for r in rows if r.active]
            if self._blockers(tx, Kind(current.kind), current.occupy, active, current.seq):
                break
            grants.append(self._grant_to_ticket(tx, current, active, claimed=True))
            current = self._ticket(tx, current.id)
            if current is not None:
                rows = self._ticket_limits(tx, current.id)
        return grants

    # ------------------------------------------------------------- queueing

    def _open_ticket(
        self,
        tx: Tx,
        request: AcquireRequest,
        active: list[LimitRow],
        me: ProcessInfo,
        wanted: int,
        seq: int | None = None,
        stalled: bool = False,
    ) -> int:
        """Queue a ticket wanting ``wanted`` grants of ``request`` on every active limit;
        return its seq (``seq``, if given: the place it had)."""
        ttl = min((r.lease_ttl for r in active), default=DEFAULT_LEASE_TTL)  # none: served at once
        seq = tx.conn.execute(
            f"INSERT INTO sluice_tickets ({TICKET_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')",
            (
                seq,  # None: the next in arrival order
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
                tx.now + ttl,
                wanted,
            ),
        ).lastrowid
        assert seq is not None
        tx.conn.executemany(
            "INSERT INTO sluice_queue (limit_id, seq, ticket_id, occupy, kind, stalled)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (r.id, seq, request.request_id, request.occupy, request.kind.value, int(stalled))
                for r in active
            ],
        )
        tx.moved.update(r.id for r in active)
        return seq

    # ------------------------------------------------------------- giving back

    def _release_one(self, tx: Tx, lease_id: str) -> bool:
        columns = "expires_at, limit_ids, holder, occupy, acquired_at, claimed"
        if HAS_RETURNING:
            row = tx.one(f"DELETE FROM sluice_leases WHERE id = ? RETURNING {columns}", (lease_id,))
        else:
            row = tx.one(f"SELECT {columns} FROM sluice_leases WHERE id = ?", (lease_id,))
            if row is not None:
                tx.run("DELETE FROM sluice_leases WHERE id = ?", (lease_id,))
        if row is None:
            return False
        held = (str(row[2]), int(row[3]), float(row[4])) if row[5] else None
        self._delete_holdings(tx, lease_id, row[1], held)
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

        ``expired``: they are taken back because they expired or their process died.
        A claimed one counts in its limits' totals as reclaimed; an unclaimed one (a
        hand-off nobody collected) gives its grant back to its ticket instead.
        """
        ids = list(lease_ids)
        for chunk in chunks(ids):
            for row in tx.all(
                f"SELECT {_LEASE_COLUMNS} FROM sluice_leases WHERE id IN ({marks(len(chunk))})",
                chunk,
            ):
                lease_id, limit_ids, claimed = str(row[0]), row[1], bool(row[14])
                held = (str(row[5]), int(str(row[8])), float(str(row[10]))) if claimed else None
                self._delete_holdings(tx, lease_id, limit_ids, held)
                tx.run("DELETE FROM sluice_leases WHERE id = ?", (lease_id,))
                if expired and claimed:
                    count_reclaimed(tx, id_list(limit_ids))
                elif expired and row[12]:
                    self._lapse(tx, row)

    def _lapse(self, tx: Tx, lease: tuple[object, ...]) -> None:
        """A grant handed to a ticket lapsed unclaimed: the ticket gets it back, keeping its
        place, stalled (passed by) until its process asks about it again."""
        ticket_id, seq, process_id = str(lease[12]), lease[13], str(lease[4])
        ticket = self._ticket(tx, ticket_id)
        if ticket is not None:
            tx.run(
                "UPDATE sluice_tickets SET wanted = wanted + 1, arrivals = ? WHERE id = ?",
                (
                    arrivals_text(
                        [
                            (float(str(lease[10])), 1),
                            *arrival_list(ticket.arrivals, ticket.created_at, ticket.wanted),
                        ]
                    ),
                    ticket_id,
                ),
            )
            tx.run("UPDATE sluice_queue SET stalled = 1 WHERE ticket_id = ?", (ticket_id,))
        elif seq is not None and process_id not in self._dead_processes(tx, [process_id]):
            names = tuple(n for n in str(lease[2]).split(",") if n)
            rows = self._limit_rows(tx, names)
            active = [rows[n] for n in sorted(rows) if rows[n].active]
            if not active:
                return
            request = AcquireRequest(
                ticket_id, names, int(str(lease[8])), Kind(str(lease[3])), str(lease[5])
            )
            info = ProcessInfo(process_id, int(str(lease[7])), str(lease[6]))
            self._open_ticket(tx, request, active, info, 1, int(str(seq)), stalled=True)
        tx.wake_tickets[ticket_id] = process_id

    def _delete_holdings(
        self, tx: Tx, lease_id: str, limit_ids: str, held: tuple[str, int, float] | None
    ) -> None:
        """Give back the units a lease holds, by primary key, marking the limits touched;
        ``held`` (holder, units, acquired_at) of a claimed lease goes on record."""
        ids = id_list(limit_ids)
        tx.conn.executemany(
            "DELETE FROM sluice_holdings WHERE limit_id = ? AND lease_id = ?",
            [(limit_id, lease_id) for limit_id in ids],
        )
        tx.touched.update(ids)
        if held is not None:
            record_held(tx, lease_id, ids, *held)

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
        tx.touched.update(limit_ids)
        tx.moved.update(limit_ids)
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
        for (tid,) in tx.all("SELECT id FROM sluice_tickets WHERE process_id = ?", (process_id,)):
            self._drop_ticket(tx, str(tid))
        leases = [
            str(r[0])
            for r in tx.all("SELECT id FROM sluice_leases WHERE process_id = ?", (process_id,))
        ]
        tx.run("DELETE FROM sluice_processes WHERE id = ?", (process_id,))
        # Its unclaimed grants lapse into nothing: their tickets are gone with it.
        tx.run(
            "UPDATE sluice_leases SET ticket_id = '' WHERE process_id = ? AND claimed = 0",
            (process_id,),
        )
        self._revoke(tx, leases, expired=died)

    # ------------------------------------------------------------- hand-off

    def _hand_off(self, tx: Tx) -> dict[str, str]:
        """Grant waiting tickets that fit now, in arrival order; return whom to wake.

        Runs after every change of a limit's capacity or queue. On each such limit,
        the head ticket (stalled ones passed by) is granted if it can be on every
        limit it waits for (it heads each of those queues too, and units and tokens
        suffice), as many times as it wants and fits; then the next, and so on,
        stopping at the first that cannot be served: strict FIFO, with no capacity
        left idle while the head could use it. A grant to the step's caller is its
        at once (``tx.mine``); others' tickets are woken to claim theirs; a head left
        waiting is woken when it changed, to learn when its next rate token or
        silent expiry is due. Returns ticket id -> process to wake.
        """
        while tx.touched or tx.moved:
            # One pass over the changed limits; grants made in it change limits again
            # (a served ticket leaves its queues), which the next, quick pass looks at.
            moved = set(tx.moved)
            work = sorted(tx.touched | tx.moved)
            tx.touched.clear()
            tx.moved.clear()
            self._hand_off_pass(tx, work, moved)
        return tx.wake_tickets

    def _hand_off_pass(self, tx: Tx, work: list[int], moved: set[int]) -> None:
        wakes = tx.wake_tickets
        me = self._process.id if self._process is not None else None
        done: set[int] = set()
        while work:
            limit_id = work.pop(0)
            if limit_id in done:
                continue
            done.add(limit_id)
            granted_here = False
            while True:
                head = tx.one(
                    f"SELECT {', '.join('t.' + c for c in TICKET_COLUMNS.split(', '))},"
                    f" {PREFIXED_COLUMNS},"
                    " (SELECT COALESCE(SUM(units), 0) FROM sluice_holdings h"
                    "  WHERE h.limit_id = q.limit_id)"
                    " FROM sluice_queue q JOIN sluice_tickets t ON t.id = q.ticket_id"
                    " JOIN sluice_limits l ON l.id = q.limit_id"
                    " WHERE q.limit_id = ? AND q.stalled = 0 ORDER BY q.seq LIMIT 1",
                    (limit_id,),
                )
                if head is None:
                    break
                ticket = TicketRow(*head[:15])
                kind = Kind(ticket.kind)
                # This limit, whose queue the ticket heads.
                here = LimitRow._make((*head[15:23], ticket.seq, head[23]))
                if (
                    here.active
                    and kind is Kind.CONCURRENCY
                    and here.slots is not None
                    and here.in_use + ticket.occupy > here.slots
                ):
                    if limit_id in moved and ticket.occupy > here.slots:
                        wakes[ticket.id] = ticket.process_id  # slots now below its occupy
                    break  # no room on this limit: the common case, decided in one query
                # A ticket in one queue needs nothing more; one in several, all of them.
                rows = [here] if ticket.limit_count == 1 else self._ticket_limits(tx, ticket.id)
                active = [r for r in rows if r.active]
                if impossible(kind, ticket.occupy, active):
                    wakes[ticket.id] = ticket.process_id  # its ask says why; it leaves
                    break
                blocked = self._blockers(tx, kind, ticket.occupy, active, ticket.seq)
                if blocked:
                    # A new head waiting for a rate token must learn when it is due,
                    # and one that a change made impossible must learn it at once.
                    new_head = granted_here or limit_id in moved
                    if new_head and any(why == "rate" for _, why in blocked):
                        wakes[ticket.id] = ticket.process_id
                    break
                if ticket.process_id != me and ticket.process_id not in tx.alive:
                    if self._gone(ticket.process_id, ticket.host):
                        self._forget_process(tx, ticket.process_id)  # never hand to the dead
                        continue
                    tx.alive.add(ticket.process_id)
                to_caller = ticket.process_id == tx.caller
                granted = self._grant_to_ticket(tx, ticket, active, claimed=to_caller)
                if to_caller:
                    tx.mine.append(granted)
                else:
                    wakes[ticket.id] = ticket.process_id
                granted_here = True
                others = [r.id for r in rows if r.id != limit_id]
                work.extend(others)  # their queues moved too
                done.difference_update(others)

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

    def _wake_targets(self, tx: Tx) -> tuple[list[tuple[str, list[str]]], list[str]]:
        """Split the tickets to wake into (other processes' addresses, this process's)."""
        by_process: dict[str, list[str]] = defaultdict(list)
        for ticket_id, process_id in tx.wake_tickets.items():
            by_process[process_id].append(ticket_id)
        me = self._process.id if self._process is not None else None
        local = by_process.pop(me, []) if me is not None else []
        targets = self._deliver(tx, by_process) if by_process else []
        return targets, local
