"""The seed at scale, on every store: thousands of submitted task runs behind one limit.

Every task run completes, the limit is never exceeded (the bodies record what they
hold in the shared Holdings recorder, which checks the invariant; not a timing),
and a backlog of a thousand costs the store a handful of tickets, not one row per
task run.
"""

from __future__ import annotations

import asyncio
import threading

from conformance._helpers import Holdings, simulate_work, simulate_work_async, wait_until
from sluice import Limits, LimitStatus, flow, task, wait
from sluice.runners import ThreadPoolTaskRunner

SLOTS = 20


def _settled(admin: Limits, name: str) -> None:
    status = admin.inspect(name)
    assert status.in_use == 0, status
    assert status.holders == [] and status.waiters == [], status


def test_five_thousand_submitted_task_runs_complete_and_never_exceed_the_limit(
    admin: Limits,
) -> None:
    admin.create("seed", slots=SLOTS)
    holdings = Holdings(slots={"seed": SLOTS})

    @task(limits=["seed"])
    def job(i: int) -> int:
        with holdings.holding("seed"):
            simulate_work(0.001)
            return i

    @flow
    def seed() -> list[int]:
        futures = [job.submit(i) for i in range(5_000)]
        wait(futures)
        return [f.result() for f in futures]

    assert seed() == list(range(5_000))
    assert holdings.count("seed") == 5_000
    holdings.check()
    _settled(admin, "seed")


def test_five_thousand_async_task_runs_on_one_loop_never_exceed_the_limit(
    admin: Limits,
) -> None:
    admin.create("seed", slots=SLOTS)
    holdings = Holdings(slots={"seed": SLOTS})

    @task(limits=["seed"])
    async def job(i: int) -> int:
        with holdings.holding("seed"):
            await simulate_work_async(0.001)
            return i

    @flow
    async def seed() -> list[int]:
        futures = [job.submit(i) for i in range(5_000)]
        return [await f for f in futures]

    assert asyncio.run(seed()) == list(range(5_000))
    assert holdings.count("seed") == 5_000
    holdings.check()
    _settled(admin, "seed")


def test_a_backlog_of_a_thousand_waits_on_a_handful_of_tickets(admin: Limits) -> None:
    admin.create("narrow", slots=1)
    first_running = threading.Event()
    go = threading.Event()

    @task(limits=["narrow"])
    def job(i: int) -> int:
        if i == 0:
            first_running.set()
            assert go.wait(60), "the test never let the first task run end"
        return i

    backlog = 1_000
    done: list[list[int]] = []

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def crowd() -> None:
        futures = [job.submit(i) for i in range(backlog)]
        assert first_running.wait(60)

        # Every other task run is in line (or on its way): count them in the store.
        def all_in_line() -> LimitStatus | None:
            status = admin.inspect("narrow")
            return status if sum(w.count for w in status.waiters) == backlog - 1 else None

        try:
            status = wait_until(all_in_line, 60, f"{backlog - 1} task runs waiting on 'narrow'")
            waiting = sum(w.count for w in status.waiters)
        finally:
            go.set()
        wait(futures)
        done.append([f.result() for f in futures])
        assert waiting == backlog - 1, status
        # One process, one task, one holder label: its waiters share tickets.
        assert 1 <= len(status.waiters) <= 3, status.waiters
        assert status.waiters[0].position == 1

    crowd()
    assert done == [list(range(backlog))]
    _settled(admin, "narrow")
