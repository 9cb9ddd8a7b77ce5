"""Redis commands per grant with 1, 100 and 1,000 waiters queued (Redis store).

A limit with slots=1 is held; N requests wait on it, queued from a second
store connection (another process, as far as Redis can tell, so wake-ups are
published). Then, repeatedly, the holder releases: the release script hands
the slot to the head waiter and publishes its wake-up, which carries the
grant; the woken waiter takes it, and its lease is released in turn.
``INFO commandstats`` (reset before the grants) counts every command the
server ran, the scripts' own and PUBLISH included; the figure is commands per
grant. Baseline, same run: the same figure with one waiter. Target: O(1), i.e.
1,000 waiters cost no more than 1.5x the commands of one.

Run: ``python benchmarks/commands_per_grant.py``
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import redis

from _common import Row, parse_args, print_table
from _redis import REDIS_URL, available, commandstats_calls, temp_redis_url
from sluice import Limits
from sluice.store.base import AcquireRequest, Granted, Queued

LIMIT = "grants"
SIZES = (1, 100, 1000)
GRANTS = 20  # grants measured per size (at most the number of waiters)


def wait_for_wake_up(store: object, request_id: str) -> None:
    """Wait until the waiter's process has received its wake-up (benchmark plumbing)."""
    deadline = time.monotonic() + 5
    while request_id not in store.engine.handed:  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise RuntimeError("the wake-up with the grant never arrived")
        time.sleep(0.0005)


def commands_per_grant(waiters: int) -> float:
    """Average server commands for one hand-off (release + collect) with ``waiters`` queued."""
    with temp_redis_url(f"grants{waiters}") as url:
        other = url.replace("127.0.0.1", "localhost", 1)
        with Limits(url) as holder_side, Limits(other) as waiter_side:
            holder_side.create(LIMIT, slots=1)
            held = holder_side.acquire(LIMIT)
            store = waiter_side._store  # benchmark plumbing: queue without a thread each
            requests = [
                AcquireRequest(f"w{i}-{uuid.uuid4().hex[:8]}", (LIMIT,)) for i in range(waiters)
            ]
            queued = [store.acquire(request) for request in requests]
            if any(not isinstance(q, Queued) for q in queued):
                raise RuntimeError("a waiter got in while the slot was held")
            grants = min(GRANTS, waiters)
            with redis.Redis.from_url(REDIS_URL) as admin:
                admin.config_resetstat()
            for i in range(grants):
                if i == 0:
                    holder_side._store.release(held.id)  # hands the slot to waiter 0
                else:
                    store.release(requests[i - 1].request_id)  # ... and on down the line
                request, place = requests[i], queued[i]
                assert isinstance(place, Queued)
                wait_for_wake_up(store, request.request_id)
                retry = AcquireRequest(request.request_id, request.names, seq=place.seq)
                collected = store.acquire(retry)  # the woken waiter takes its grant
                if not isinstance(collected, Granted):
                    raise RuntimeError(f"waiter {i} was not handed the slot: {collected}")
            total = commandstats_calls()
            for request in requests:
                store.abandon(request.request_id)
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
        "Redis commands per grant (the release that hands over; the waiter takes the grant "
        "from its wake-up), from INFO commandstats",
        rows,
        [
            f"{GRANTS} grants measured per size (1 with one waiter); every command counts, "
            "the scripts' own and PUBLISH included",
            "one round trip per grant: the releasing script; the woken waiter takes the "
            "grant its wake-up carries",
        ],
        markdown=args.markdown,
    )


if __name__ == "__main__":
    main()
