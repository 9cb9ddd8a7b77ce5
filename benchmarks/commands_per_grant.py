"""Redis commands per grant with 1, 100 and 1,000 waiters queued (Redis store).

A limit with slots=1 is held; N tickets wait on it, each wanting one grant,
opened from a second store object (another process, as far as Redis can tell,
so hand-offs to them wait to be claimed and wake-ups are published). Then,
repeatedly, the holder's side releases the lease in an exchange: the step hands
the slot to the head ticket and publishes its id; the woken process asks about
the ticket in an exchange of its own, which claims the grant; that lease is
released by the holder's side in turn. ``INFO commandstats`` (reset before the
grants) counts every command the server ran, the scripts' own and PUBLISH
included; the figure is commands per grant. Baseline, same run: the same figure
with one waiter. Target: O(1), i.e. 1,000 waiters cost no more than 1.5x the
commands of one.

Run: ``python benchmarks/commands_per_grant.py``
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Collection, Sequence

import redis

from _common import Row, parse_args, print_table
from _redis import REDIS_URL, available, commandstats_calls, temp_redis_url
from sluice import Limits
from sluice.store.base import AcquireRequest, Ask, Exchange, Withdrawal
from sluice.store.redis.store import RedisStore, from_url

LIMIT = "grants"
SIZES = (1, 100, 1000)
GRANTS = 20  # grants measured per size (at most the number of waiters)


class Woken:
    """The ticket ids the waiters' process was woken for (benchmark plumbing)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ids: set[str] = set()

    def __call__(self, ticket_ids: Collection[str]) -> None:
        with self._cond:
            self._ids.update(ticket_ids)
            self._cond.notify_all()

    def wait_for(self, ticket_id: str) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: ticket_id in self._ids, timeout=5):
                raise RuntimeError("the wake-up never arrived")


def commands_per_grant(waiters: int) -> float:
    """Average server commands for one hand-off (release + claiming ask) with ``waiters``."""
    with temp_redis_url(f"grants{waiters}") as url:
        with Limits(url) as admin:
            admin.create(LIMIT, slots=1)
        holder_side, waiter_side = from_url(url), from_url(url)
        try:
            return _measure(holder_side, waiter_side, waiters)
        finally:
            holder_side.close()
            waiter_side.close()


def _measure(holder_side: RedisStore, waiter_side: RedisStore, waiters: int) -> float:
    woken = Woken()
    waiter_side.set_wake_handler(woken)
    first = holder_side.exchange(Exchange(requests=(AcquireRequest("holder", (LIMIT,)),)))
    held = first.grants[0].lease_id
    # One ticket per request (distinct holders: they never join one ticket).
    requests = [
        AcquireRequest(f"w{i}-{uuid.uuid4().hex[:8]}", (LIMIT,), holder=f"w{i}")
        for i in range(waiters)
    ]
    seqs = []
    for request in requests:
        answer = waiter_side.exchange(Exchange(requests=(request,)))
        if request.request_id not in answer.queued:
            raise RuntimeError("a waiter got in while the slot was held")
        seqs.append(answer.queued[request.request_id].seq)
    grants = min(GRANTS, waiters)
    with redis.Redis.from_url(REDIS_URL) as server:
        server.config_resetstat()
    for i in range(grants):
        assert held is not None
        holder_side.exchange(Exchange(releases=(held,)))  # hands the slot to waiter i
        request = requests[i]
        woken.wait_for(request.request_id)
        ask = Ask(request.request_id, request, seqs[i], 1)
        answer = waiter_side.exchange(Exchange(asks=(ask,)))  # claims it
        if [g.ticket_id for g in answer.grants] != [request.request_id]:
            raise RuntimeError(f"waiter {i} was not handed the slot: {answer}")
        held = answer.grants[0].lease_id
    total = commandstats_calls()
    waiter_side.exchange(
        Exchange(withdrawals=tuple(Withdrawal(r.request_id) for r in requests[grants:]))
    )
    return total / grants


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__ or "", argv)
    if not available():
        print(f"Redis at {REDIS_URL} is not reachable: skipped")
        return
    figures = {size: commands_per_grant(size) for size in SIZES}
    base = figures[1]
    rows = [
        Row(
            f"commands per grant, {size:,} waiter{'s' if size > 1 else ''}",
            figures[size],
            "",
            "the same with 1 waiter",
            base,
            "<= 1.5x baseline (O(1))" if size > 1 else "-",
            figures[size] <= 1.5 * base if size > 1 else None,
            digits=1,
        )
        for size in SIZES
    ]
    print_table(
        "Redis commands per grant (the exchange that releases and hands over; the woken "
        "process's exchange that claims), from INFO commandstats",
        rows,
        [
            f"{GRANTS} grants measured per size (1 with one waiter); every command counts, "
            "the scripts' own and PUBLISH included",
            "two round trips per grant across processes: the releasing exchange, and the "
            "woken process's ask, which claims the grant",
        ],
        markdown=args.markdown,
    )


if __name__ == "__main__":
    main()
