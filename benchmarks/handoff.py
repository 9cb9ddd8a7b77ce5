"""Handoff latency across two processes on one limit with slots=1.

Process A holds the only slot; process B is blocked in ``acquire``. A records
``time.monotonic()`` and releases; B records ``time.monotonic()`` as soon as its
``acquire`` returns. On Linux ``time.monotonic()`` reads CLOCK_MONOTONIC, which
is system-wide, so the two readings are comparable across processes. The
difference is the whole handoff: A's release step, the wake-up reaching B, and
B's grant step.

Baselines, same run: the same handoff between two threads through a
``threading.Condition`` (the floor for a wake-up in one process), and one raw
SQLite write transaction with the store's settings (the floor for one store
step). Target: p50 <= 2 ms.

A second table repeats the handoff on a PostgreSQL store (if a server answers,
see ``_postgres.py``), against a NOTIFY -> receive round trip and a raw
``UPDATE ... RETURNING`` round trip through psycopg, measured in the same run.

Run: ``python benchmarks/handoff.py``
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections.abc import Sequence
from multiprocessing.synchronize import Event as EventType
from typing import Any

from _common import (
    Row,
    parse_args,
    percentile,
    print_table,
    raw_sqlite_transaction,
    reap,
    temp_sqlite_url,
)
from _postgres import (
    notify_roundtrips,
    pg_unavailable,
    pg_version,
    skip_note,
    temp_pg_url,
    update_latencies,
)
from _redis import (
    available,
    publish_receive_latencies,
    raw_evalsha,
    redis_skip_note,
    redis_version,
    temp_redis_url,
)
from sluice import Limits

LIMIT = "handoff"
HANDOFFS = 200
WARMUP = 10
SETTLE = 0.005  # let the waiter fall asleep before each release
TIMEOUT = 30.0


def _wait_for_waiter(limits: Limits, deadline: float) -> None:
    """Return once the store shows a waiter queued on LIMIT (benchmark plumbing, not timed)."""
    while not limits.inspect(LIMIT).waiters:
        if time.monotonic() > deadline:
            raise RuntimeError("process B never queued on the limit")
        time.sleep(0.0005)


def _holder(url: str, rounds: int, a_holds: EventType, b_done: EventType, out: Any) -> None:
    """Process A: hold the slot, wait until B is queued, release at a recorded instant."""
    try:
        released: list[float] = []
        with Limits(url) as limits:
            for _ in range(rounds):
                lease = limits.acquire(LIMIT, timeout=TIMEOUT)
                a_holds.set()
                _wait_for_waiter(limits, time.monotonic() + TIMEOUT)
                time.sleep(SETTLE)
                t = time.monotonic()
                lease.release()
                released.append(t)
                if not b_done.wait(TIMEOUT):
                    raise RuntimeError("process B did not get the slot")
                b_done.clear()
        out.put(("A", released, None))
    except BaseException as exc:  # report, don't hang the parent
        out.put(("A", [], repr(exc)))


def _waiter(url: str, rounds: int, a_holds: EventType, b_done: EventType, out: Any) -> None:
    """Process B: block in acquire while A holds; record the instant it returns."""
    try:
        got: list[float] = []
        with Limits(url) as limits:
            for _ in range(rounds):
                if not a_holds.wait(TIMEOUT):
                    raise RuntimeError("process A did not take the slot")
                a_holds.clear()
                lease = limits.acquire(LIMIT, timeout=TIMEOUT)
                got.append(time.monotonic())
                lease.release()
                b_done.set()
        out.put(("B", got, None))
    except BaseException as exc:
        out.put(("B", [], repr(exc)))


def sluice_handoffs(url: str, rounds: int) -> list[float]:
    """Run A and B in two spawned processes; return the handoff latencies in seconds."""
    ctx = mp.get_context("spawn")
    a_holds, b_done = ctx.Event(), ctx.Event()
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_holder, args=(url, rounds, a_holds, b_done, out)),
        ctx.Process(target=_waiter, args=(url, rounds, a_holds, b_done, out)),
    ]
    for p in procs:
        p.start()
    results: dict[str, list[float]] = {}
    errors: list[str] = []
    try:
        while len(results) < 2 and not errors:
            key, values, error = out.get(timeout=120)
            if error:
                errors.append(f"{key}: {error}")
            else:
                results[key] = values
    finally:
        reap(procs, errors)
    return [b - a for a, b in zip(results["A"], results["B"], strict=True)]


def condition_handoffs(rounds: int) -> list[float]:
    """The same protocol between two threads through a threading.Condition."""
    cond = threading.Condition()
    state = {"held": True, "waiting": False, "round": 0}
    released: list[float] = []
    got: list[float] = []

    def waiter() -> None:
        for i in range(rounds):
            with cond:

                def my_turn(i: int = i) -> bool:
                    return state["round"] == i and bool(state["held"])

                cond.wait_for(my_turn)
                state["waiting"] = True
                cond.notify_all()
                cond.wait_for(lambda: not state["held"])
                got.append(time.monotonic())
                state["waiting"] = False
                state["round"] = i + 1
                cond.notify_all()

    thread = threading.Thread(target=waiter)
    thread.start()
    for i in range(rounds):
        with cond:
            state["held"] = True
            cond.notify_all()
            cond.wait_for(lambda: bool(state["waiting"]))
        time.sleep(SETTLE)
        with cond:
            t = time.monotonic()
            state["held"] = False
            released.append(t)
            cond.notify_all()

            def handed_over(i: int = i) -> bool:
                return state["round"] == i + 1

            cond.wait_for(handed_over)
    thread.join()
    return [b - a for a, b in zip(released, got, strict=True)]


def sqlite_transactions(path: str, count: int) -> list[float]:
    """Latencies of ``count`` raw SQLite write transactions."""
    samples: list[float] = []
    with raw_sqlite_transaction(path) as transaction:
        for _ in range(50):
            transaction()
        for _ in range(count):
            t = time.perf_counter()
            transaction()
            samples.append(time.perf_counter() - t)
    return samples


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__ or "", argv)
    with temp_sqlite_url("handoff") as (url, directory):
        with Limits(url) as limits:
            limits.create(LIMIT, slots=1)
        handoffs = sluice_handoffs(url, WARMUP + HANDOFFS)[WARMUP:]
        txns = sqlite_transactions(os.path.join(directory, "raw.db"), 2000)
    cond = condition_handoffs(WARMUP + HANDOFFS)[WARMUP:]

    ms = 1000.0
    p50, p99 = percentile(handoffs, 50) * ms, percentile(handoffs, 99) * ms
    c50, c99 = percentile(cond, 50) * ms, percentile(cond, 99) * ms
    t50 = percentile(txns, 50) * ms
    rows = [
        Row(
            "handoff p50, 2 processes",
            p50,
            "ms",
            "threading.Condition p50",
            c50,
            "<= 2 ms",
            p50 <= 2.0,
        ),
        Row("handoff p99, 2 processes", p99, "ms", "threading.Condition p99", c99),
        Row("handoff p50, 2 processes", p50, "ms", "raw SQLite write txn p50", t50),
        Row("handoff max, 2 processes", max(handoffs) * ms, "ms"),
    ]
    print_table(
        f"Handoff latency: release in one process -> lease held in another, limit slots=1 "
        f"({len(handoffs)} handoffs)",
        rows,
        [
            "latency = B's time.monotonic() after acquire returns - A's just before release()",
            f"A waits until B is queued, then {SETTLE * 1000:g} ms more, before each release",
        ],
        markdown=args.markdown,
    )
    redis_section(args.markdown)
    postgres_section(args.markdown)


def redis_section(markdown: bool) -> None:
    """The same handoffs on a Redis store, against redis-py baselines."""
    if not available():
        redis_skip_note()
        return
    with temp_redis_url("handoff") as url:
        with Limits(url) as limits:
            limits.create(LIMIT, slots=1)
        handoffs = sluice_handoffs(url, WARMUP + HANDOFFS)[WARMUP:]
    pubsub = publish_receive_latencies(HANDOFFS)
    with raw_evalsha() as evalsha:
        for _ in range(50):
            evalsha()
        calls = []
        for _ in range(2000):
            t = time.perf_counter()
            evalsha()
            calls.append(time.perf_counter() - t)
    ms = 1000.0
    p50, p99 = percentile(handoffs, 50) * ms, percentile(handoffs, 99) * ms
    b50, b99 = percentile(pubsub, 50) * ms, percentile(pubsub, 99) * ms
    rows = [
        Row(
            "handoff p50, 2 processes", p50, "ms", "PUBLISH->receive p50", b50, "<= 1 ms", p50 <= 1
        ),
        Row("handoff p99, 2 processes", p99, "ms", "PUBLISH->receive p99", b99),
        Row("handoff p50, 2 processes", p50, "ms", "raw EVALSHA p50", percentile(calls, 50) * ms),
        Row("handoff max, 2 processes", max(handoffs) * ms, "ms"),
    ]
    print_table(
        f"Handoff latency, Redis {redis_version()} store: release in one process -> lease "
        f"held in another, limit slots=1 ({len(handoffs)} handoffs)",
        rows,
        [
            "a handoff is: A's release exchange (which grants B's ticket and PUBLISHes its id "
            "to B's process), B's listener thread receiving it, B's exchange claiming the "
            "grant, B's waiting thread taking it",
            "baselines through redis-py on this server: PUBLISH on one connection -> arrival "
            "at a subscriber thread; one EVALSHA of a script that returns at once",
        ],
        markdown=markdown,
    )


def postgres_section(markdown: bool) -> None:
    """The same handoffs on a PostgreSQL store, against psycopg baselines."""
    reason = pg_unavailable()
    if reason:
        skip_note(reason)
        return
    with temp_pg_url("handoff") as url:
        with Limits(url) as limits:
            limits.create(LIMIT, slots=1)
        handoffs = sluice_handoffs(url, WARMUP + HANDOFFS)[WARMUP:]
    notify = notify_roundtrips(HANDOFFS)
    updates = update_latencies(2000)
    ms = 1000.0
    p50, p99 = percentile(handoffs, 50) * ms, percentile(handoffs, 99) * ms
    n50, n99 = percentile(notify, 50) * ms, percentile(notify, 99) * ms
    rows = [
        Row("handoff p50, 2 processes", p50, "ms", "NOTIFY->receive p50", n50, "<= 2 ms", p50 <= 2),
        Row("handoff p99, 2 processes", p99, "ms", "NOTIFY->receive p99", n99),
        Row(
            "handoff p50, 2 processes",
            p50,
            "ms",
            "raw UPDATE..RETURNING p50",
            percentile(updates, 50) * ms,
        ),
        Row("handoff max, 2 processes", max(handoffs) * ms, "ms"),
    ]
    print_table(
        f"Handoff latency, PostgreSQL {pg_version()} store: release in one process -> lease "
        f"held in another, limit slots=1 ({len(handoffs)} handoffs)",
        rows,
        [
            "a handoff is: A's release step (which grants B and NOTIFYs it in one "
            "transaction, with the grant), B's listener thread receiving it, B's waiting "
            "thread taking the grant",
            "baselines through psycopg on this server: pg_notify() on one autocommit "
            "connection -> arrival on a LISTEN connection watched by a thread; one "
            "autocommit UPDATE of one row",
        ],
        markdown=markdown,
    )


if __name__ == "__main__":
    main()
