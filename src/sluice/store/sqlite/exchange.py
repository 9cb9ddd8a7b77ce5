"""The one step a process sends with its batch of work: withdraw, release, ask, request.

:meth:`Exchanger.exchange` runs inside one write transaction (see
:class:`~sluice.store.base.Exchange` for the contract and its order). Whatever it
frees is handed off before the asks and the new requests are looked at, so a
release whose units go to a ticket of the same process returns that grant in
the same step: a finishing task run and the next one cost one transaction.
"""

from __future__ import annotations

from sluice.errors import InvalidRequest, LimitNotFound, SluiceError
from sluice.limits import gcra
from sluice.limits.model import Kind
from sluice.store.base import (
    AcquireRequest,
    Ask,
    Exchange,
    Exchanged,
    Granted,
    Queued,
    Withdrawal,
)
from sluice.store.sqlite.engine import SQLiteEngine
from sluice.store.sqlite.ipc import ProcessInfo
from sluice.store.sqlite.tx import (
    Claim,
    LimitRow,
    TicketRow,
    Tx,
    add_arrivals,
    arrival_list,
    arrivals_text,
    take_arrivals,
)

__all__ = ["Exchanger"]

_FENCE = "CAST(substr(id, length(ticket_id) + 2) AS INTEGER)"
"""A lease's grant number (its id is <ticket id>.<fence>): grant order, as a number."""


class _Answer:
    """What an exchange has to say so far."""

    def __init__(self) -> None:
        self.released: dict[str, bool] = {}
        self.queued: dict[str, Queued] = {}
        self.refused: dict[str, SluiceError] = {}
        self.joined: dict[str, str] = {}
        self.missing: dict[str, tuple[str, ...]] = {}
        self.waiting: dict[str, str] = {}
        """Tickets of the caller asked about or opened: ticket id -> the request id that
        names what is missing for it. Where each stands is read after the last hand-off."""


class Exchanger(SQLiteEngine):
    """The exchange step over the engine's primitives."""

    def _exchange(self, tx: Tx, me: ProcessInfo, batch: Exchange) -> Exchanged:
        tx.caller = me.id
        answer = _Answer()
        for withdrawal in batch.withdrawals:
            self._withdraw(tx, me, withdrawal)
        for lease_id in batch.releases:
            answer.released[lease_id] = self._release_one(tx, lease_id)
        if tx.touched or tx.moved:
            self._hand_off(tx)  # what was freed goes to those already waiting, first
        for ask in batch.asks:
            self._ask(tx, me, ask, answer)
        for request in batch.requests:
            self._request(tx, me, request, answer)
        if tx.touched or tx.moved:
            self._hand_off(tx)
        for ticket_id, request_id in answer.waiting.items():
            ticket = self._ticket(tx, ticket_id)
            if ticket is not None:
                self._report(tx, me, ticket, request_id, answer)
        return Exchanged(
            answer.released,
            tuple(tx.mine),
            answer.queued,
            answer.refused,
            answer.joined,
            answer.missing,
        )

    # ------------------------------------------------------------- withdrawals

    def _withdraw(self, tx: Tx, me: ProcessInfo, withdrawal: Withdrawal) -> None:
        """Take back wanted grants; what the ticket no longer wants comes, beyond that, out
        of the grants handed to it and not yet claimed (they go back)."""
        ticket = self._ticket(tx, withdrawal.ticket_id)
        wanted = ticket.wanted if ticket is not None and ticket.process_id == me.id else 0
        count = withdrawal.count
        take = wanted if count is None else min(count, wanted)
        if ticket is not None and take > 0:
            if take >= ticket.wanted:
                self._drop_ticket(tx, ticket.id)
            else:
                segments = arrival_list(ticket.arrivals, ticket.created_at, ticket.wanted)
                tx.run(
                    "UPDATE sluice_tickets SET wanted = wanted - ?, arrivals = ? WHERE id = ?",
                    (take, arrivals_text(take_arrivals(segments, take)), ticket.id),
                )
        beyond = None if count is None else count - take
        if beyond is None or beyond > 0:
            # Handed over meanwhile for waiters now gone: never claimed, never used.
            unclaimed = tx.all(
                "SELECT id FROM sluice_leases WHERE ticket_id = ? AND process_id = ?"
                f" AND claimed = 0 ORDER BY acquired_at DESC, {_FENCE} DESC",
                (withdrawal.ticket_id, me.id),
            )
            ids = [str(r[0]) for r in unclaimed]
            self._revoke(tx, ids if beyond is None else ids[:beyond])
        if withdrawal.timed_out_on is not None:
            tx.run(
                "UPDATE sluice_limits SET timeouts = timeouts + ? WHERE name = ?",
                (count or 1, withdrawal.timed_out_on),
            )
        self._unwatch(withdrawal.ticket_id)

    # ------------------------------------------------------------- asks

    def _ask(self, tx: Tx, me: ProcessInfo, ask: Ask, answer: _Answer) -> None:
        claimed = self._claim(tx, me, ask.ticket_id)
        tx.mine.extend(claimed)
        ticket = self._ticket(tx, ask.ticket_id)
        if ticket is not None and ticket.process_id == me.id:
            active = [r for r in self._ticket_limits(tx, ticket.id) if r.active]
            try:
                self._check_request(ask.request, active)
            except InvalidRequest as exc:  # a change made it impossible: it leaves the line
                self._drop_ticket(tx, ticket.id)
                answer.refused[ticket.id] = exc
                return
            tx.run("UPDATE sluice_queue SET stalled = 0 WHERE ticket_id = ?", (ticket.id,))
            tx.run(
                "UPDATE sluice_tickets SET expires_at = ? + lease_ttl WHERE id = ?",
                (tx.now, ticket.id),
            )
            self._wait_or_serve(tx, me, ticket, ask.request, answer)
            return
        left = ask.count - len(claimed)
        if left <= 0:
            return
        # Gone (expired, or its last grant lapsed and went): open it again at its place.
        request = ask.request
        checked = self._valid(tx, request, answer)
        if checked is None:
            return
        active = checked
        if active is None:
            return
        self._open_ticket(tx, request, active, me, left, seq=ask.seq)
        reopened = self._ticket(tx, request.request_id)
        assert reopened is not None
        self._wait_or_serve(tx, me, reopened, request, answer)

    def _claim(self, tx: Tx, me: ProcessInfo, ticket_id: str) -> list[Granted]:
        """The grants handed to one of this process's tickets: claimed now, if still live."""
        rows = tx.all(
            "SELECT id, names, kind, acquired_at, expires_at, lease_ttl FROM sluice_leases"
            " WHERE ticket_id = ? AND process_id = ? AND claimed = 0"
            f" ORDER BY acquired_at, {_FENCE}",
            (ticket_id, me.id),
        )
        grants: list[Granted] = []
        lapsed: list[str] = []
        for lease_id, names, kind, acquired_at, expires_at, ttl in rows:
            if float(expires_at) <= tx.now:
                lapsed.append(str(lease_id))
                continue
            name_tuple = tuple(n for n in str(names).split(",") if n)
            if kind == Kind.RATE.value:
                tx.run("DELETE FROM sluice_leases WHERE id = ?", (lease_id,))
                grants.append(
                    Granted(None, name_tuple, float(acquired_at), None, None, (), ticket_id)
                )
                continue
            expires = tx.now + float(ttl)
            tx.run(
                "UPDATE sluice_leases SET claimed = 1, expires_at = ? WHERE id = ?",
                (expires, lease_id),
            )
            grants.append(
                Granted(
                    str(lease_id),
                    name_tuple,
                    float(acquired_at),
                    expires,
                    float(ttl),
                    (),
                    ticket_id,
                )
            )
        self._revoke(tx, lapsed, expired=True)  # too late: the ticket gets them back
        return grants

    # ------------------------------------------------------------- requests

    def _valid(self, tx: Tx, request: AcquireRequest, answer: _Answer) -> list[LimitRow] | None:
        """The active limits a request waits on, or None (refused, nothing changed)."""
        rows = self._limit_rows(tx, request.names)
        missing = tuple(n for n in request.names if n not in rows)
        if missing and request.missing == "raise":
            answer.refused[request.request_id] = LimitNotFound(missing)
            return None
        active = [r for r in sorted(rows.values(), key=lambda r: r.name) if r.active]
        try:
            self._check_request(request, active)
        except InvalidRequest as exc:
            answer.refused[request.request_id] = exc
            return None
        if missing:
            answer.missing[request.request_id] = missing
        return active

    def _request(self, tx: Tx, me: ProcessInfo, request: AcquireRequest, answer: _Answer) -> None:
        active = self._valid(tx, request, answer)
        if active is None:
            return
        missing = answer.missing.get(request.request_id, ())
        if request.join is not None:
            joined = self._join(tx, me, request, active)
            if joined is not None:
                answer.joined[request.request_id] = joined.id
                self._wait_or_serve(tx, me, joined, request, answer)
                return
        claim = Claim(
            request.request_id, me.id, request.holder, me.host, me.pid, request.occupy, request.kind
        )
        count = request.count
        while count > 0:
            blocked = self._blockers(tx, request.kind, request.occupy, active, None)
            # Something expired or died in the way? Look again with fresh numbers.
            if (
                blocked
                and any(why != "queue" for _, why in blocked)
                and self._reclaim(tx, [r.id for r in active])
            ):
                active = self._refresh(tx, active)
                blocked = self._blockers(tx, request.kind, request.occupy, active, None)
            if blocked:
                break
            tx.mine.append(self._grant(tx, claim, active, missing, claimed=True))
            count -= 1
            active = self._refresh(tx, active)
        if count == 0:
            return
        self._open_ticket(tx, request, active, me, count)
        answer.waiting[request.request_id] = request.request_id

    def _join(
        self, tx: Tx, me: ProcessInfo, request: AcquireRequest, active: list[LimitRow]
    ) -> TicketRow | None:
        """Add the request to the ticket it names, if that ticket waits for the same request
        and nobody queued after it on any of its limits; the ticket, or None."""
        assert request.join is not None
        ticket = self._ticket(tx, request.join)
        if (
            ticket is None
            or ticket.process_id != me.id
            or ticket.wanted <= 0
            or ticket.names != ",".join(request.names)
            or ticket.occupy != request.occupy
            or ticket.kind != request.kind.value
            or ticket.holder != request.holder
        ):
            return None
        behind = tx.one(
            "SELECT 1 FROM sluice_queue q WHERE q.seq > ? AND q.limit_id IN"
            " (SELECT limit_id FROM sluice_queue WHERE ticket_id = ?) LIMIT 1",
            (ticket.seq, ticket.id),
        )
        if behind is not None:
            return None
        arrivals = add_arrivals(
            ticket.arrivals, ticket.created_at, ticket.wanted, tx.now, request.count
        )
        tx.run(
            "UPDATE sluice_tickets SET wanted = wanted + ?, arrivals = ?,"
            " expires_at = ? + lease_ttl WHERE id = ?",
            (request.count, arrivals, tx.now, ticket.id),
        )
        return self._ticket(tx, ticket.id)

    def _refresh(self, tx: Tx, active: list[LimitRow]) -> list[LimitRow]:
        fresh = self._limit_rows(tx, [r.name for r in active])
        return [fresh[r.name] for r in active if r.name in fresh]

    # ------------------------------------------------------------- where a ticket stands

    def _position(self, tx: Tx, limit_id: int, seq: int) -> int:
        """1 + every grant wanted ahead of ``seq`` in the limit's queue."""
        row = tx.one(
            "SELECT COALESCE(SUM(t.wanted), 0) FROM sluice_queue q"
            " JOIN sluice_tickets t ON t.id = q.ticket_id WHERE q.limit_id = ? AND q.seq < ?",
            (limit_id, seq),
        )
        return int(row[0]) + 1

    def _next_silent_change(
        self,
        tx: Tx,
        kind: Kind,
        occupy: int,
        blocked: list[tuple[LimitRow, str]],
        seq: int,
        me: ProcessInfo,
    ) -> tuple[float | None, set[int]]:
        """When something that sends no wake-up (a token, an expiry) may let the ticket in,
        and which local processes' exits should wake it."""
        times: list[float] = []
        pids: set[int] = set()
        for row, why in blocked:
            if why == "rate" and row.rate is not None and row.burst is not None:
                times.append(gcra.allow_at(row.tat, row.rate, row.burst, occupy))
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

    def _wait_or_serve(
        self,
        tx: Tx,
        me: ProcessInfo,
        ticket: TicketRow,
        request: AcquireRequest,
        answer: _Answer,
    ) -> None:
        """Serve one of this process's tickets as far as it can be now; the rest waits."""
        rows = self._ticket_limits(tx, ticket.id)
        active = [r for r in rows if r.active]
        if active:
            kind = Kind(ticket.kind)
            blocked = self._blockers(tx, kind, ticket.occupy, active, ticket.seq)
            if blocked and self._reclaim(tx, [r.id for r in active]):
                rows = self._ticket_limits(tx, ticket.id)
                active = [r for r in rows if r.active]
                blocked = self._blockers(tx, kind, ticket.occupy, active, ticket.seq)
            if blocked:
                answer.waiting[ticket.id] = request.request_id
                return
        # Nothing in the way (or, every limit it waits on disabled, nothing to wait on).
        tx.mine.extend(self._serve(tx, ticket, rows))
        answer.waiting[ticket.id] = request.request_id

    def _report(
        self, tx: Tx, me: ProcessInfo, ticket: TicketRow, request_id: str, answer: _Answer
    ) -> None:
        """Say where a ticket of this process waits, and when to look again unwoken."""
        rows = self._ticket_limits(tx, ticket.id)
        active = [r for r in rows if r.active]
        kind = Kind(ticket.kind)
        blocked = self._blockers(tx, kind, ticket.occupy, active, ticket.seq)
        first = blocked[0][0] if blocked else (active[0] if active else None)
        retry_in, watch = self._next_silent_change(tx, kind, ticket.occupy, blocked, ticket.seq, me)
        if not blocked:
            retry_in = 0.001  # it can be served (its ticket is stalled): look again at once
        if watch:
            self._watch(ticket.id, watch)
        answer.queued[ticket.id] = Queued(
            ticket.id,
            ticket.seq,
            first.name if first is not None else "",
            self._position(tx, first.id, ticket.seq) if first is not None else 1,
            retry_in,
            ticket.lease_ttl,
            answer.missing.get(request_id, ()),
            ticket.wanted,
        )
