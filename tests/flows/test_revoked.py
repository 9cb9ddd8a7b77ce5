"""A reset while task runs hold a limit: the bodies whose leases it revoked are stopped.

A reset frees the limit at once, so the next waiters start; the task runs it took the
lease from must not run on beside them. They are interrupted as a timeout would
interrupt them and end Failed with LeaseLost, so at no moment do more bodies run on a
limit than its slots, counting only bodies not yet told their lease is gone.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import pytest

import sluice.runs
import sluice.runtime
from conformance._helpers import wait_until
from sluice import Limits, flow, task
from sluice.errors import LeaseLost

pytestmark = pytest.mark.timeout(90)

SLOTS = 5
RUNS = 15


@dataclass
class Bodies:
    """The task bodies inside, and those told to stop; checks at every entry that no
    more than ``slots`` bodies are inside and not yet told."""

    slots: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    inside: set[int] = field(default_factory=set)
    stopped: dict[int, float] = field(default_factory=dict)
    """Body -> time.monotonic() when it was interrupted (told its lease is gone)."""
    gates: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = field(
        default_factory=dict
    )
    violations: list[list[int]] = field(default_factory=list)
    peak: int = 0
    entries: int = 0
    open: bool = False
    """Whether bodies entering from now on go through at once."""

    def enter(self, i: int) -> asyncio.Future[None]:
        """Record body ``i`` inside; return what it waits for before it returns."""
        loop = asyncio.get_running_loop()
        gate: asyncio.Future[None] = loop.create_future()
        with self.lock:
            self.entries += 1
            self.inside.add(i)
            running = sorted(self.inside - set(self.stopped))
            self.peak = max(self.peak, len(running))
            if len(running) > self.slots:
                self.violations.append(running)
            if self.open:
                gate.set_result(None)
            self.gates[i] = (loop, gate)
        return gate

    def stop(self, i: int) -> None:
        with self.lock:
            self.stopped[i] = time.monotonic()

    def leave(self, i: int) -> None:
        with self.lock:
            self.inside.discard(i)

    def running(self) -> set[int]:
        with self.lock:
            return self.inside - set(self.stopped)

    def let_all_go(self) -> None:
        """Let every body inside return, and every later one go through at once."""
        with self.lock:
            self.open = True
            gates = list(self.gates.values())
        for loop, gate in gates:
            loop.call_soon_threadsafe(_open, gate)


def _open(gate: asyncio.Future[None]) -> None:
    if not gate.done():
        gate.set_result(None)


def waiting_on(limits: Limits, name: str) -> int:
    return sum(w.count for w in limits.inspect(name).waiters)


def test_a_reset_stops_the_task_runs_whose_leases_it_revoked(admin: Limits) -> None:
    """15 task runs on a 5-slot limit: 5 hold it, 10 wait. A reset revokes the 5 leases;
    the next 5 start at once, and the 5 revoked bodies are stopped before they do."""
    admin.create("pool", slots=SLOTS)  # lease TTL 30 s: a renewal would come 10 s later
    bodies = Bodies(SLOTS)

    @task(limits=["pool"])
    async def hold(i: int) -> int:
        gate = bodies.enter(i)
        try:
            await gate
        except asyncio.CancelledError:
            bodies.stop(i)
            raise
        finally:
            bodies.leave(i)
        return i

    @flow
    def pool_flow() -> tuple[list[int], set[int], float]:
        futures = hold.map(range(RUNS))
        try:
            wait_until(
                lambda: (
                    len(bodies.running()) == SLOTS and waiting_on(admin, "pool") == RUNS - SLOTS
                ),
                30,
                f"{SLOTS} bodies inside and {RUNS - SLOTS} task runs waiting",
            )
            first = bodies.running()
            reset_at = time.monotonic()
            assert admin.reset("pool") == SLOTS
            wait_until(
                lambda: (
                    bodies.violations
                    or (set(bodies.stopped) == first and len(bodies.running()) == SLOTS)
                ),
                20,
                "the revoked bodies to stop and the next ones to start",
            )
            assert bodies.violations == [], f"over {SLOTS} bodies at once: {bodies.violations}"
        finally:
            bodies.let_all_go()  # whatever happened, let the flow end
        outcomes = [f.result(timeout=30, raise_on_failure=False) for f in futures]
        return outcomes, first, reset_at

    outcomes, first, reset_at = pool_flow()

    assert bodies.violations == [], f"more than {SLOTS} bodies ran at once: {bodies.violations}"
    assert bodies.peak == SLOTS
    assert set(bodies.stopped) == first
    # Told at once by the reset's wake-up, not at the next renewal (lease_ttl / 3 = 10 s).
    gap = max(bodies.stopped.values()) - reset_at
    assert gap < 2.0, f"the revoked bodies stopped {gap:.3f}s after the reset"
    for i, outcome in enumerate(outcomes):
        if i in first:
            assert isinstance(outcome, LeaseLost), outcome
            assert outcome.names == ("pool",)
        else:
            assert outcome == i
    status = admin.inspect("pool")
    assert (status.in_use, status.holders, status.waiters) == (0, [], [])


def test_a_revoked_task_run_ends_failed_naming_lease_lost_unless_retried(admin: Limits) -> None:
    admin.create("one", slots=1)
    bodies = Bodies(1)

    async def body(i: int) -> int:
        gate = bodies.enter(i)
        try:
            await gate
        except asyncio.CancelledError:
            bodies.stop(i)
            raise
        finally:
            bodies.leave(i)
        return i

    retried = task(limits=["one"], retries=1, name="retried")(body)
    once = task(limits=["one"], name="once")(body)

    @flow
    def revoked_flow() -> tuple[object, object, str]:
        first = retried.submit(0)
        try:
            wait_until(lambda: bodies.running() == {0}, 30, "the first attempt inside")
            assert admin.reset("one") == 1
            wait_until(lambda: bodies.entries == 2, 20, "the retry to start")
        finally:
            bodies.let_all_go()
        done = first.result(timeout=30, raise_on_failure=False)
        bodies.open = False
        second = once.submit(1)
        try:
            wait_until(lambda: bodies.running() == {1}, 30, "the other task's body inside")
            assert admin.reset("one") == 1
            wait_until(lambda: bodies.stopped.keys() == {0, 1}, 20, "the body to be stopped")
        finally:
            bodies.let_all_go()
        return (
            done,
            second.result(timeout=30, raise_on_failure=False),
            sluice.runtime.flow_run.id or "",
        )

    done, failed, run_id = revoked_flow()
    assert bodies.violations == []
    assert set(bodies.stopped) == {0, 1}
    # the revoked attempt failed with LeaseLost and was retried, as any failure is
    assert done == 0
    runs = {t.run.task: t for t in sluice.runs.get(run_id).task_runs}
    names = [s.name for s in runs["retried"].states]
    assert names.count("Running") == 2 and names[-1] == "Completed", names
    retrying = next(s for s in runs["retried"].states if s.name == "Retrying")
    assert "LeaseLost" in retrying.message and "'one'" in retrying.message
    # without retries left, a revoked run ends Failed, its message naming LeaseLost
    assert isinstance(failed, LeaseLost)
    last = runs["once"].states[-1]
    assert last.name == "Failed" and last.message.startswith("LeaseLost: lease "), last
    assert "revoked" in last.message
    status = admin.inspect("one")
    assert (status.in_use, status.holders, status.waiters) == (0, [], [])
