"""This process's place in the store's lines: every acquire and release, batched into few steps.

Every waiting caller of a process (a thread in ``acquire``, a coroutine, a task run
of a flow) is a :class:`Waiter`. Waiters asking for the same thing (same limits,
``occupy``, kind, holder and missing policy) stand on one store *ticket*, which
wants as many grants as they are, in their arrival order; the store's queues see
a handful of tickets however long the backlog. The :class:`Line` turns what the
process has for the store at one moment (releases, new waiters, waiters who gave
up, tickets to look at again) into ONE :meth:`~sluice.store.base.Store.exchange`
step, a *round*, and routes the answer: grants to waiters in order, places in line,
refusals. Releases go first in every round, and the grants they free for this
process come back in the same answer.

Rounds run one at a time: on the thread of a sync caller that finds the line idle
(no hop when uncontended), else on the line's own thread, which also runs them
when a wake-up or a timer says a ticket must be looked at again. Nothing here
sleeps on a waiter's behalf: each waiter waits for its own signal, in its own
thread or task, with its own timeout (:mod:`sluice.limits.waiting`).

The accounting, per ticket: every request a waiter made is, at any moment, either
*owed* by the store (``wanted``), a grant on its way to us, or settled. A waiter
who gives up becomes *leaving* until the line has undone its part: by withdrawing
one owed grant, or by releasing the grant that comes for it when no waiter behind
it wants it. Only then is its caller told that it has left (:meth:`Line.give_up`).
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from sluice.errors import StoreError, StoreUnavailable
from sluice.limits import counters
from sluice.limits.lease import LeaseState
from sluice.limits.tickets import (
    Key,
    Leaving,
    Release,
    Signal,
    Ticket,
    Waiter,
    Withdraw,
    key_of,
    nothing,
    request_ids,
)
from sluice.store.base import (
    AcquireRequest,
    Ask,
    Exchange,
    Exchanged,
    Granted,
    Queued,
    Store,
    Withdrawal,
)

__all__ = ["MAX_BACKOFF", "Line"]

log = logging.getLogger("sluice.limits")

MAX_BACKOFF = 2.0
"""Seconds: the longest pause between rounds while the store cannot be reached."""

_LEAD_ROUNDS = 2
"""Rounds a sync caller runs for others before handing the line to its thread."""


class Line:
    """The waiters and releases of one process on one store, batched into exchange rounds."""

    def __init__(
        self,
        store: Store,
        track_lease: Callable[[LeaseState], None],
        track_ticket: Callable[[str, float], None],
        untrack_ticket: Callable[[str], None],
    ) -> None:
        self.store = store
        self._track_lease = track_lease
        self._track_ticket = track_ticket
        self._untrack_ticket = untrack_ticket
        self.rounds = 0
        """Exchange steps taken so far (for tests and benchmarks)."""
        self._closed = False
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        """Start empty (also in a forked child: nothing of the parent's line is ours)."""
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._arrivals: dict[Key, list[Waiter]] = {}
        self._releases: list[Release] = []
        self._withdrawals: list[Withdraw] = []
        self._asks: set[str] = set()
        self._early: set[str] = set()
        """Woken tickets not known yet: a round's answer opening them may not be routed."""
        self._tickets: dict[str, Ticket] = {}
        self._tails: dict[Key, Ticket] = {}
        self._timers: list[tuple[float, str]] = []
        self._owner: str | None = None
        """Who runs rounds now: None, "thread" (the line's own) or "caller" (a sync caller)."""
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._retry_at = 0.0

    # ------------------------------------------------------------- callers

    def arrive(self, waiter: Waiter, lead: bool) -> None:
        """Put a waiter in line; ``lead``: the caller may run the round itself (sync)."""
        with self._lock:
            if self._closed:
                raise StoreError(f"store {self.store.url} is closed")
            self._arrivals.setdefault(key_of(waiter.request), []).append(waiter)
            run_here = self._claim_round(lead)
        if run_here:
            self._lead()

    def release(self, release: Release, lead: bool) -> None:
        """Give a lease back in the next round (``release.signal`` says when it is done)."""
        with self._lock:
            if self._closed:
                release.error = StoreError(f"store {self.store.url} is closed")
                release.signal()
                return
            self._releases.append(release)
            run_here = self._claim_round(lead)
        if run_here:
            self._lead()

    def give_up(
        self, waiter: Waiter, timed_out_on: str | None, settled: Signal, lead: bool
    ) -> bool:
        """Take a waiter out of line (it timed out, was cancelled or interrupted).

        ``settled`` is signalled once the line has undone the waiter's part (its
        owed grant withdrawn, or the grant that came for it given back). Returns
        False, signalling nothing, if the waiter had been granted meanwhile: the
        caller has the grant, and must release it if it does not want it.
        """
        with self._lock:
            if waiter.grant is not None:
                return False
            if waiter.cancelled or waiter.error is not None:
                settled()  # refused, failed, or already gone: nothing to undo
                return True
            waiter.cancelled = True
            leaving = Leaving(settled, timed_out_on)
            ticket = waiter.ticket
            if ticket is None:
                arrivals = self._arrivals.get(key_of(waiter.request), [])
                if waiter in arrivals:
                    arrivals.remove(waiter)  # never sent: nothing to undo
                    settled()
                else:
                    waiter.leaving = leaving  # in a round now: settled when it is answered
                return True
            ticket.standing -= 1  # it stays in the deque, done: passed over from now on
            ticket.leaving.append(leaving)
            self._reconcile(ticket)
            run_here = self._has_work() and self._claim_round(lead)
        if run_here:
            self._lead()
        return True

    def refresh(self, waiter: Waiter, lead: bool) -> None:
        """Ask the store where a waiter stands now (its ``answered_at`` moves on)."""
        with self._lock:
            ticket = waiter.ticket
            if ticket is None or waiter.done or self._closed:
                waiter.answered_at = time.monotonic()
                waiter.signal()
                return
            ticket.asking.append(waiter)
            self._asks.add(ticket.id)
            run_here = self._claim_round(lead)
        if run_here:
            self._lead()

    def wake(self, ticket_ids: Collection[str]) -> None:
        """The store says these tickets should be looked at again (from any thread)."""
        with self._lock:
            mine = [t for t in ticket_ids if t in self._tickets]
            # The store may wake a ticket before the answer that opened it is routed here.
            self._early.update(t for t in ticket_ids if t not in self._tickets)
            if not mine or self._closed:
                return
            self._asks.update(mine)
            self._claim_round(False)

    def close(self) -> None:
        """Fail every waiter still in line and stop the line's thread."""
        with self._lock:
            self._closed = True
            error = StoreError(f"store {self.store.url} is closed")
            waiters = [w for ws in self._arrivals.values() for w in ws]
            waiters += [w for t in self._tickets.values() for w in t.waiters]
            signals = [r.signal for r in self._releases]
            signals += [s for w in self._withdrawals for s in w.settles]
            signals += [leaving.signal for t in self._tickets.values() for leaving in t.leaving]
            for release in self._releases:
                release.error = error
            self._arrivals, self._tickets, self._tails = {}, {}, {}
            self._releases, self._withdrawals = [], []
            self._wakeup.notify_all()
        for waiter in waiters:
            if not waiter.done:
                waiter.error = error
                waiter.signal()
        for signal in signals:
            signal()

    # ------------------------------------------------------------- who runs rounds

    def _claim_round(self, lead: bool) -> bool:
        """Under the lock: make sure a round will run; True if the caller runs it itself.

        Whoever runs rounds keeps running them until nothing is left, so new work
        only needs an owner when there is none.
        """
        if self._owner is not None:
            return False
        if lead:
            self._owner = "caller"
            return True
        self._owner = "thread"
        self._start_thread()
        self._wakeup.notify()
        return False

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="sluice-line", daemon=True)
            self._thread.start()

    def _lead(self) -> None:
        """A sync caller runs rounds while there is work, then hands the line over."""
        try:
            for _ in range(_LEAD_ROUNDS):
                if not self._round():
                    return
        finally:
            with self._lock:
                if self._owner == "caller":  # still ours: the line's thread goes on
                    self._owner = "thread"
                    self._start_thread()
                    self._wakeup.notify()

    def _serve(self) -> None:
        """The line's thread: rounds when handed work, asks when a timer is due."""
        while True:
            with self._lock:
                while self._owner != "thread":
                    if self._closed:
                        return
                    self._due_asks()
                    if self._owner is None and self._has_work():
                        self._owner = "thread"
                        break
                    timeout = None
                    if self._timers:
                        timeout = max(0.0, self._timers[0][0] - time.monotonic())
                    self._wakeup.wait(timeout)
                if self._closed:
                    return
            while self._round():
                pass

    def _has_work(self) -> bool:
        """Under the lock: whether a round is due now."""
        if self._arrivals or self._releases:
            return True
        return bool(self._withdrawals or self._asks) and time.monotonic() >= self._retry_at

    def _due_asks(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, ticket_id = heapq.heappop(self._timers)
            ticket = self._tickets.get(ticket_id)
            if ticket is not None and ticket.due and ticket.due <= now:
                ticket.due = 0.0
                self._asks.add(ticket_id)

    # ------------------------------------------------------------- one round

    def _round(self) -> bool:
        """Send everything pending as one exchange and route its answer; False if idle."""
        with self._lock:
            self._due_asks()
            if self._closed or not self._has_work():
                self._owner = None  # the caller or thread running rounds stops here
                return False
            round_ = _Round.take(self)
        try:
            answer = self.store.exchange(round_.batch)
        except BaseException as exc:
            with self._lock:
                self._failed(round_, exc)
            if isinstance(exc, StoreError):
                return True
            if isinstance(exc, Exception):
                log.exception("sluice: an exchange with %s failed", self.store.url)
                return True
            raise  # an interrupt of the thread leading the round
        self.rounds += 1
        with self._lock:
            self._failures, self._retry_at = 0, 0.0
            self._route(round_, answer)
        return True

    def _failed(self, round_: _Round, exc: BaseException) -> None:
        """Under the lock: a round that did not reach the store (or failed in it).

        Releases and requests that never queued fail with the error; tickets keep
        their place and are asked about again after a back-off, as are withdrawals
        (whose leaving waiters are told they left: the ticket expires by itself); a
        waiter that asked for its last answer before timing out is answered by the failure.
        """
        for release in round_.releases:
            release.error = exc
            release.signal()
        for waiters in round_.requests.values():
            for waiter in waiters:
                if waiter.leaving is not None:
                    waiter.leaving.signal()
                    waiter.leaving = None
                elif not waiter.done:
                    waiter.error = exc
                    waiter.signal()
        for withdraw in round_.withdrawals:
            for settle in withdraw.settles:
                settle()
            self._withdrawals.append(Withdraw(withdraw.withdrawal))
        self._asks.update(a.ticket_id for a in round_.batch.asks if a.ticket_id in self._tickets)
        # Waiters past their timeout asked for one last answer; the store could not give
        # it, so they time out now with the place they last had (not when it is back).
        now = time.monotonic()
        for ask in round_.batch.asks:
            ticket = self._tickets.get(ask.ticket_id)
            if ticket is not None:
                for waiter in ticket.asking:
                    waiter.answered_at = now
                    waiter.signal()
                ticket.asking.clear()
        self._failures += 1
        if isinstance(exc, StoreUnavailable) and (round_.batch.asks or round_.withdrawals):
            log.warning("sluice: %s; waiting tickets keep their place, retrying", exc)
        backoff = min(MAX_BACKOFF, 0.05 * 2.0 ** (self._failures + 2)) * random.uniform(0.5, 1.0)
        self._retry_at = time.monotonic() + backoff
        heapq.heappush(self._timers, (self._retry_at, ""))
        self._start_thread()
        self._wakeup.notify()  # its thread may sleep past the retry on an older timer

    # ------------------------------------------------------------- routing the answer

    def _route(self, round_: _Round, answer: Exchanged) -> None:
        """Under the lock: tell every waiter and releaser what the round did for it."""
        for release in round_.releases:
            release.found = answer.released.get(release.lease_id, False)
            release.signal()
        for withdraw in round_.withdrawals:
            for settle in withdraw.settles:
                settle()
        touched: dict[str, Ticket] = {}
        for ask in round_.batch.asks:
            ticket = self._tickets.get(ask.ticket_id)
            if ticket is None:
                continue
            error = answer.refused.get(ask.ticket_id)
            if error is not None:
                self._fail_waiters(ticket.waiters, error)
                ticket.waiters.clear()
                ticket.standing = 0
                ticket.wanted = 0
            elif ask.ticket_id not in answer.queued:
                ticket.wanted = 0  # served, or gone with nothing owed
            touched[ticket.id] = ticket
        for request_id, waiters in round_.requests.items():
            ticket = self._place(request_id, waiters, answer)
            if ticket is not None:
                touched[ticket.id] = ticket
        answered = set(touched)  # their wanted comes from the answer, not from counting
        for grant in answer.grants:
            ticket = self._tickets.get(grant.ticket_id)
            if ticket is None:
                if grant.lease_id is not None:  # for nobody here any more
                    self._releases.append(Release(grant.lease_id, nothing))
                continue
            if ticket.id not in answer.queued and ticket.id not in answered:
                ticket.wanted = max(ticket.wanted - 1, 0)  # a hand-off from our release
            self._hand(ticket, grant)
            touched[ticket.id] = ticket
        for ticket_id, queued in answer.queued.items():
            ticket = self._tickets.get(ticket_id)
            if ticket is not None:
                self._queued(ticket, queued)
        early, self._early = self._early, set()
        self._asks.update(t for t in early if t in self._tickets)  # woken before known
        now = time.monotonic()
        for ticket in touched.values():
            for waiter in ticket.asking:
                waiter.answered_at = now
                waiter.signal()
            ticket.asking.clear()
            self._reconcile(ticket)

    def _place(self, request_id: str, waiters: list[Waiter], answer: Exchanged) -> Ticket | None:
        """Where a round's new waiters of one request now stand; their ticket."""
        error = answer.refused.get(request_id)
        if error is not None:
            self._fail_waiters(waiters, error)
            for waiter in waiters:
                if waiter.leaving is not None:
                    waiter.leaving.signal()
            return None
        missing = answer.missing.get(request_id, ())
        request = waiters[0].request
        joined = answer.joined.get(request_id)
        ticket = self._tickets.get(joined) if joined is not None else None
        if ticket is None:
            ticket = Ticket(request_id, _template(request, request_id))
            self._tickets[request_id] = ticket
            if request_id in answer.queued:
                self._tails[key_of(request)] = ticket
        for waiter in waiters:
            waiter.missing = missing
            waiter.ticket = ticket
            if waiter.leaving is not None:
                ticket.leaving.append(waiter.leaving)
                waiter.leaving = None
            elif not waiter.done:
                ticket.stand(waiter)
                waiter.answered_at = time.monotonic()
        if ticket.id not in answer.queued:
            ticket.wanted = 0  # every grant it asked for came now
        return ticket

    def _hand(self, ticket: Ticket, grant: Granted) -> None:
        """Give a grant to the first waiter standing on its ticket, or give it back."""
        while ticket.waiters:
            waiter = ticket.waiters.popleft()
            if waiter.done:
                continue
            ticket.standing -= 1
            waiter.grant = grant
            waiter.missing = grant.missing or waiter.missing
            waited = time.monotonic() - waiter.started
            counters.record_grant(grant.names, waiter.request.occupy, waited)
            if grant.lease_id is not None:
                waiter.state = LeaseState.from_grant(grant, waiter.request, waited)
                self._track_lease(waiter.state)
            waiter.signal()
            return
        # Nobody stands on the ticket any more: the grant was a leaving waiter's.
        settle = ticket.leaving.popleft().signal if ticket.leaving else nothing
        if grant.lease_id is not None:
            self._releases.append(Release(grant.lease_id, settle))
        else:
            settle()

    def _queued(self, ticket: Ticket, queued: Queued) -> None:
        """A ticket still waits: remember where, tell the waiters with news, plan the next look.

        News is a waiter's first place in line, and a new place for the first waiter of
        the ticket; the others read their place when they need it (:attr:`Waiter.info`).
        """
        if ticket.queued is None:
            self._track_ticket(ticket.id, queued.lease_ttl)
        before = ticket.queued.position if ticket.queued is not None else None
        ticket.queued = queued
        ticket.seq = queued.seq
        ticket.wanted = queued.wanted
        ticket.head_ordinal()
        news = ticket.unannounced
        ticket.unannounced = []
        if ticket.waiters and before != queued.position:
            news.append(ticket.waiters[0])
        for waiter in news:
            if not waiter.done:
                waiter.told = True
                waiter.signal()
        # Spread the rare safety re-checks of many idle tickets over time.
        delay = self.store.safety_interval * random.uniform(0.8, 1.0)
        if queued.retry_in is not None:
            delay = min(delay, queued.retry_in)
        self._schedule(ticket, delay)

    def _reconcile(self, ticket: Ticket) -> None:
        """Under the lock: withdraw what the store owes that no waiter stands for any more;
        forget a ticket with nothing left to do."""
        excess = ticket.wanted - ticket.standing
        while excess > 0:
            leaving = ticket.leaving.popleft() if ticket.leaving else None
            timed_out_on = leaving.timed_out_on if leaving is not None else None
            settles = [leaving.signal] if leaving is not None else []
            count = 1 if leaving is not None else excess
            self._withdrawals.append(Withdraw(Withdrawal(ticket.id, count, timed_out_on), settles))
            ticket.wanted -= count
            excess -= count
        if ticket.standing or ticket.wanted or ticket.leaving:
            return
        self._tickets.pop(ticket.id, None)
        key = key_of(ticket.request)
        if self._tails.get(key) is ticket:
            del self._tails[key]
        if ticket.queued is not None:
            self._untrack_ticket(ticket.id)

    def _schedule(self, ticket: Ticket, delay: float) -> None:
        due = time.monotonic() + max(delay, 0.0)
        if ticket.due and ticket.due <= due:
            return
        ticket.due = due
        heapq.heappush(self._timers, (due, ticket.id))
        self._start_thread()  # its thread keeps the timers
        self._wakeup.notify()

    @staticmethod
    def _fail_waiters(waiters: Collection[Waiter], error: BaseException) -> None:
        for waiter in waiters:
            if not waiter.done:
                waiter.error = error
                waiter.signal()


@dataclass
class _Round:
    """What one round sends, and who is waiting for each part of its answer."""

    batch: Exchange
    releases: list[Release]
    withdrawals: list[Withdraw]
    requests: dict[str, list[Waiter]]

    @classmethod
    def take(cls, line: Line) -> _Round:
        """Under the line's lock: everything pending, as one exchange."""
        releases, line._releases = line._releases, []
        withdrawals, line._withdrawals = line._withdrawals, []
        asks = []
        for ticket_id in sorted(line._asks):
            ticket = line._tickets.get(ticket_id)
            if ticket is not None:
                asks.append(Ask(ticket.id, ticket.request, ticket.seq, ticket.standing))
        line._asks.clear()
        requests: dict[str, list[Waiter]] = {}
        sent = []
        for key, waiters in line._arrivals.items():
            standing = [w for w in waiters if not w.done]
            if not standing:
                continue
            first = standing[0].request
            tail = line._tails.get(key)
            request = AcquireRequest(
                request_ids.next(),
                first.names,
                first.occupy,
                first.kind,
                first.holder,
                first.missing,
                len(standing),
                tail.id if tail is not None and tail.wanted > 0 else None,
            )
            requests[request.request_id] = standing
            sent.append(request)
        line._arrivals = {}
        batch = Exchange(
            tuple(r.lease_id for r in releases),
            tuple(w.withdrawal for w in withdrawals),
            tuple(asks),
            tuple(sent),
        )
        return cls(batch, releases, withdrawals, requests)


def _template(request: AcquireRequest, ticket_id: str) -> AcquireRequest:
    """The request a ticket stands for, as an Ask sends it again."""
    return AcquireRequest(
        ticket_id,
        request.names,
        request.occupy,
        request.kind,
        request.holder,
        request.missing,
    )
