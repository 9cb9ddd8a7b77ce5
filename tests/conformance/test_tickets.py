"""Tickets that stand for many requests, and the exchange step, on every store.

A process puts identical waiting requests on one ticket, so the store's work does
not grow with the backlog; first-come-first-served must still hold request by
request across processes. These tests drive :meth:`Store.exchange` directly with
two store objects on one store URL: each registers as its own process.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from sluice import Limits, LimitStatus
from sluice.errors import InvalidRequest, LimitNotFound
from sluice.limits.model import Kind
from sluice.store import BACKENDS, canonical_url
from sluice.store.base import (
    CLAIM_WINDOW,
    AcquireRequest,
    Ask,
    Exchange,
    Exchanged,
    Store,
    Withdrawal,
)

from ._helpers import Holdings, simulate_work, wait_until, wait_until_async

pytestmark = pytest.mark.timeout(60)


def open_store(url: str) -> Store:
    """A store object of its own (not shared through the registry): its own process id."""
    key = canonical_url(url)
    module, _, attr = BACKENDS[key.split("://", 1)[0]].store.partition(":")
    factory = getattr(__import__(module, fromlist=[attr]), attr)
    store: Store = factory(key)
    return store


@pytest.fixture
def stores(cross_process_url: str) -> Iterator[tuple[Store, Store]]:
    """Two processes' stores on one fresh store URL, with limit "db" (1 slot) created."""
    a, b = open_store(cross_process_url), open_store(cross_process_url)
    with Limits(cross_process_url) as limits:
        limits.create("db", slots=1)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


_ids = iter(range(10**9))


def request(
    count: int = 1,
    *,
    names: tuple[str, ...] = ("db",),
    join: str | None = None,
    occupy: int = 1,
    holder: str = "h",
    missing: str = "raise",
) -> AcquireRequest:
    return AcquireRequest(
        f"req{next(_ids)}",
        names,
        occupy,
        Kind.CONCURRENCY,
        holder,
        missing,  # type: ignore[arg-type]
        count,
        join,
    )


def grants_of(answer: Exchanged) -> list[str]:
    return [g.ticket_id for g in answer.grants]


def test_one_request_for_many_is_granted_as_far_as_it_fits_and_queues_the_rest(
    stores: tuple[Store, Store], cross_process_url: str
) -> None:
    a, _ = stores
    with Limits(cross_process_url) as limits:
        limits.update("db", slots=3)
        req = request(5)
        answer = a.exchange(Exchange(requests=(req,)))
        assert grants_of(answer) == [req.request_id] * 3
        lease_ids = [g.lease_id for g in answer.grants]
        assert len(set(lease_ids)) == 3 and all(
            lid is not None and lid.startswith(req.request_id + ".") for lid in lease_ids
        )
        queued = answer.queued[req.request_id]
        assert (queued.wanted, queued.position, queued.blocked_on) == (2, 1, "db")
        status = limits.inspect("db")
        assert status.in_use == 3
        assert [(w.ticket_id, w.count, w.position) for w in status.waiters] == [
            (req.request_id, 2, 1)
        ]
        # Releasing two hands both to the ticket, in the same step.
        answer = a.exchange(Exchange(releases=tuple(lease_ids[:2])))  # type: ignore[arg-type]
        assert answer.released == {lease_ids[0]: True, lease_ids[1]: True}
        assert grants_of(answer) == [req.request_id] * 2
        assert limits.inspect("db").waiters == []
        rest = [g.lease_id for g in answer.grants] + [lease_ids[2]]
        answer = a.exchange(Exchange(releases=tuple(rest)))  # type: ignore[arg-type]
        assert all(answer.released.values()) and answer.grants == ()
        assert limits.inspect("db").in_use == 0


def test_fifo_holds_request_by_request_when_two_processes_interleave(
    stores: tuple[Store, Store], cross_process_url: str
) -> None:
    a, b = stores
    blocker = a.exchange(Exchange(requests=(request(),))).grants[0].lease_id
    assert blocker is not None
    first = request(3, holder="a")
    a.exchange(Exchange(requests=(first,)))
    second = request(2, holder="b")
    b.exchange(Exchange(requests=(second,)))
    # A's newcomers may not join its first ticket: B queued behind it meanwhile.
    third = request(2, holder="a", join=first.request_id)
    answer = a.exchange(Exchange(requests=(third,)))
    assert third.request_id not in answer.joined
    with Limits(cross_process_url) as limits:
        waiters = limits.inspect("db").waiters
    assert [(w.ticket_id, w.count, w.position) for w in waiters] == [
        (first.request_id, 3, 1),
        (second.request_id, 2, 4),
        (third.request_id, 2, 6),
    ]
    order: list[str] = []
    held = blocker
    for _ in range(7):
        for store in (a, b):
            answer = store.exchange(Exchange(releases=(held,)) if held else Exchange())
            held = ""
            if answer.grants:
                break
        # The grant went to a ticket of a or b: whoever's it is claims it by asking.
        for store, ticket in ((a, first), (b, second), (a, third)):
            claimed = store.exchange(Exchange(asks=(Ask(ticket.request_id, ticket, 0, 0),))).grants
            for grant in [*answer.grants, *claimed]:
                if grant.ticket_id == ticket.request_id and grant.lease_id:
                    order.append(ticket.holder + ticket.request_id[-1:])
                    held = grant.lease_id
        assert held, "each release must hand the slot to the next request in line"
    assert len(order) == 7
    holders = [o[0] for o in order]
    assert holders == ["a", "a", "a", "b", "b", "a", "a"]


def test_a_request_joins_its_own_ticket_while_it_is_last(
    stores: tuple[Store, Store], cross_process_url: str
) -> None:
    a, _ = stores
    a.exchange(Exchange(requests=(request(),)))  # takes the slot
    first = request(2)
    a.exchange(Exchange(requests=(first,)))
    more = request(3, join=first.request_id)
    answer = a.exchange(Exchange(requests=(more,)))
    assert answer.joined == {more.request_id: first.request_id}
    assert answer.queued[first.request_id].wanted == 5
    with Limits(cross_process_url) as limits:
        assert [(w.ticket_id, w.count) for w in limits.inspect("db").waiters] == [
            (first.request_id, 5)
        ]
    # A different request (another holder) never joins it.
    other = request(1, holder="other", join=first.request_id)
    answer = a.exchange(Exchange(requests=(other,)))
    assert answer.joined == {} and other.request_id in answer.queued


def test_withdrawing_half_a_ticket_and_then_all_of_it_returns_every_unit(
    stores: tuple[Store, Store], cross_process_url: str
) -> None:
    a, b = stores
    with Limits(cross_process_url) as limits:
        limits.update("db", slots=2)
        held = b.exchange(Exchange(requests=(request(2),))).grants
        ticket = request(6)
        a.exchange(Exchange(requests=(ticket,)))
        a.exchange(Exchange(withdrawals=(Withdrawal(ticket.request_id, 2, timed_out_on="db"),)))
        status = limits.inspect("db")
        assert [w.count for w in status.waiters] == [4]
        assert status.totals.timeouts == 2
        # b releases: both units are handed to a's ticket, waiting to be claimed ...
        b.exchange(Exchange(releases=tuple(g.lease_id for g in held if g.lease_id)))
        status = limits.inspect("db")
        assert status.in_use == 2 and [w.count for w in status.waiters] == [2]
        # ... and a gives up entirely before claiming them: they come back at once.
        a.exchange(Exchange(withdrawals=(Withdrawal(ticket.request_id),)))
        status = limits.inspect("db")
        assert (status.in_use, status.waiters) == (0, [])


def test_an_unclaimed_hand_off_lapses_to_the_next_waiter_and_its_ticket_keeps_its_place(
    stores: tuple[Store, Store], cross_process_url: str
) -> None:
    a, b = stores
    holder = a.exchange(Exchange(requests=(request(),))).grants[0]
    slow = request(1, holder="slow")
    b.exchange(Exchange(requests=(slow,)))  # b will not claim what it is handed
    quick = request(1, holder="quick")
    a.exchange(Exchange(requests=(quick,)))
    assert holder.lease_id is not None
    handed_at = time.monotonic()
    a.exchange(Exchange(releases=(holder.lease_id,)))  # the slot goes to b's ticket
    with Limits(cross_process_url) as limits:
        status = limits.inspect("db")
        assert [h.lease_id.split(".")[0] for h in status.holders] == [slow.request_id]
        # a's ticket is served once b's grant lapses, within the claim window or so.
        granted: list[str] = []

        def asked() -> bool:
            answer = a.exchange(Exchange(asks=(Ask(quick.request_id, quick, 0, 1),)))
            granted.extend(g.lease_id for g in answer.grants if g.lease_id)
            return bool(granted)

        wait_until(asked, CLAIM_WINDOW + 3.0, "the lapsed hand-off to reach the next waiter")
        assert time.monotonic() - handed_at >= CLAIM_WINDOW - 0.5
        status = limits.inspect("db")
        assert [w.ticket_id for w in status.waiters] == [slow.request_id]
        # b comes back: its ticket kept its place at the head and is served next.
        answer = b.exchange(Exchange(asks=(Ask(slow.request_id, slow, 0, 1),)))
        assert answer.grants == () and answer.queued[slow.request_id].position == 1
        a.exchange(Exchange(releases=tuple(granted)))
        answer = b.exchange(Exchange(asks=(Ask(slow.request_id, slow, 0, 1),)))
        assert grants_of(answer) == [slow.request_id]


def test_a_refused_request_changes_nothing_and_the_rest_of_the_step_happens(
    stores: tuple[Store, Store], cross_process_url: str
) -> None:
    a, _ = stores
    held = a.exchange(Exchange(requests=(request(),))).grants[0].lease_id
    assert held is not None
    ghost = request(2, names=("db", "ghost"))
    huge = request(1, occupy=5)
    fine = request(1)
    answer = a.exchange(Exchange(releases=(held,), requests=(ghost, huge, fine)))
    assert isinstance(answer.refused[ghost.request_id], LimitNotFound)
    assert isinstance(answer.refused[huge.request_id], InvalidRequest)
    assert answer.released == {held: True}
    assert grants_of(answer) == [fine.request_id]
    with Limits(cross_process_url) as limits:
        status = limits.inspect("db")
        assert status.in_use == 1 and status.waiters == []


def test_an_ask_about_a_vanished_ticket_opens_it_again_at_its_place(
    stores: tuple[Store, Store], cross_process_url: str
) -> None:
    a, b = stores
    held = a.exchange(Exchange(requests=(request(),))).grants[0].lease_id
    early = request(1, holder="early")
    queued = a.exchange(Exchange(requests=(early,))).queued[early.request_id]
    a.exchange(Exchange(withdrawals=(Withdrawal(early.request_id),)))  # as if it expired
    late = request(1, holder="late")
    b.exchange(Exchange(requests=(late,)))
    answer = a.exchange(Exchange(asks=(Ask(early.request_id, early, queued.seq, 1),)))
    assert answer.queued[early.request_id].position == 1  # ahead of late, as it was
    with Limits(cross_process_url) as limits:
        assert [w.ticket_id for w in limits.inspect("db").waiters] == [
            early.request_id,
            late.request_id,
        ]
    assert held is not None


def test_ten_thousand_waiters_of_one_process_stand_on_one_ticket(store_url: str) -> None:
    """Store work does not grow with the backlog: 10,000 coroutines, one ticket, few steps."""
    slots, waiters = 20, 10_000

    async def main() -> tuple[int, int]:
        from sluice.aio import Limits as AsyncLimits

        async with AsyncLimits(store_url) as limits:
            await limits.create("db", slots=slots)
            gate = asyncio.Event()

            async def one() -> None:
                await gate.wait()
                async with limits.concurrency("db", holder="same"):
                    with holdings.holding("db"):
                        await asyncio.sleep(0)  # one turn of the loop while holding

            tasks = [asyncio.ensure_future(one()) for _ in range(waiters)]
            await asyncio.sleep(0)  # one turn of the loop: every task waits on the gate
            gate.set()

            async def most_queued() -> LimitStatus | None:
                status = await limits.inspect("db")
                queued = sum(w.count for w in status.waiters)
                return status if queued >= waiters - slots - 200 else None

            status = await wait_until_async(most_queued, 30, "most of the waiters queued")
            tickets = len(status.waiters)
            line = limits._session.line
            before = line.rounds
            await asyncio.gather(*tasks)
            return tickets, line.rounds - before

    holdings = Holdings(slots={"db": slots})
    tickets, rounds = asyncio.run(main())
    assert tickets <= 3, f"{tickets} tickets for {waiters} identical waiters"
    assert holdings.count("db") == waiters
    holdings.check()
    assert rounds < waiters / 2, f"{rounds} store steps for {waiters} grants"


def test_threads_of_one_process_with_one_holder_share_tickets_and_never_exceed(
    limits: Limits,
) -> None:
    limits.create("db", slots=3)
    holdings = Holdings(slots={"db": 3})
    errors: list[BaseException] = []
    start = threading.Barrier(40)

    def worker() -> None:
        try:
            start.wait()
            for _ in range(5):
                with limits.concurrency("db", holder="pool", timeout=30), holdings.holding("db"):
                    simulate_work(0.001)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]
    assert holdings.count("db") == 200
    holdings.check()
    status = limits.inspect("db")
    assert (status.in_use, status.waiters) == (0, [])
