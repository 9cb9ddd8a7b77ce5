"""Admission: waiting tasks never hold workers, and `why` names the limit that held them up."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

import sluice.runs
import sluice.runtime
from conformance._helpers import Holdings, simulate_work, stays, wait_until
from sluice import Limits, flow, task
from sluice.runners import ThreadPoolTaskRunner


def waiting_on(limits: Limits, name: str) -> int:
    """How many requests wait on a limit (a ticket stands for ``count`` of them)."""
    return sum(w.count for w in limits.inspect(name).waiters)


def test_no_head_of_line_blocking_across_limits(admin: Limits) -> None:
    admin.create("full", slots=1)
    admin.create("free", slots=10)
    release = threading.Event()
    free_done: list[float] = []

    @task(limits=["full"])
    def on_full(i: int) -> int:
        release.wait(20)
        return i

    @task(limits=["free"])
    def on_free(i: int) -> int:
        free_done.append(time.monotonic())
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def f() -> tuple[int, list[int], int]:
        blocked = on_full.map(range(20))  # 1 runs, 19 wait on "full" without a worker
        wait_until(lambda: waiting_on(admin, "full") >= 19, 20, "19 task runs waiting on 'full'")
        quick = [x.result(timeout=20) for x in on_free.map(range(30))]
        waiting = waiting_on(admin, "full")
        release.set()
        return waiting, quick, sum(x.result() for x in blocked)

    waiting, quick, total = f()
    assert waiting == 19  # still queued while all 30 tasks on the free limit ran
    assert quick == list(range(30))
    assert total == sum(range(20))
    assert admin.inspect("full").in_use == 0 and admin.inspect("free").in_use == 0


def test_why_attributes_a_forced_wait_to_the_right_limit(admin: Limits) -> None:
    admin.create("gate", slots=1)
    admin.create("other", slots=5)
    held = admin.acquire("gate")  # held outside the flow: the task must wait for it

    @task(limits=["other", "gate"])
    def gated() -> None:
        pass

    @flow
    def f() -> str:
        fut = gated.submit()
        wait_until(lambda: waiting_on(admin, "gate") == 1, 10, "the task run queued on 'gate'")
        # the forced wait: 0.5 s queued on 'gate', the task run's only request in line
        stays(lambda: waiting_on(admin, "gate") == 1, 0.5, "the task run waiting on 'gate'")
        held.release()
        fut.result()
        return sluice.runtime.flow_run.id or ""

    run_id = f()
    report = sluice.runs.why(run_id)
    gate = report.cause("limit", "gate")
    assert gate is not None
    assert 0.3 < gate.wall_seconds < 2.0  # the pause, on the wall clock, is the gate's
    assert 0.3 < gate.task_seconds < 2.0
    assert report.cause("limit", "other") is None
    waiting = next(s for s in sluice.runs.get(run_id).task_runs[0].states if s.name == "Waiting")
    assert (waiting.limit, waiting.position) == ("gate", 1)
    text = str(report)
    assert "waiting on limit 'gate'" in text and run_id in text
    assert abs(sum(c.wall_seconds for c in report.causes) - report.wall_seconds) < 1e-6


def test_why_names_waiting_for_a_free_worker(admin: Limits) -> None:
    @task
    def nap(i: int) -> None:
        simulate_work(0.2)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def f() -> str:
        for fut in nap.map(range(3)):
            fut.result()
        return sluice.runtime.flow_run.id or ""

    report = sluice.runs.why(f())
    worker = report.cause("worker")
    assert worker is not None and worker.task_runs == 2
    assert 0.4 < worker.task_seconds < 2.0  # 0.2 s + 0.4 s of queueing for the one worker


def test_a_keyboard_interrupt_cancels_pending_tasks_and_releases_every_lease(
    admin: Limits,
) -> None:
    admin.create("one", slots=1)
    started = threading.Event()
    finish = threading.Event()

    @task(limits=["one"])
    def hog(i: int) -> None:
        started.set()
        deadline = time.monotonic() + 20
        # Runs until the flow interrupts it: Python code between short waits, where
        # the interruption can land (a single long wait in C could not be interrupted).
        while not finish.wait(0.01) and time.monotonic() < deadline:
            pass

    @flow
    def f() -> None:
        hog.map(range(5))
        assert started.wait(10), "the first task run never started"
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            f()
    finally:
        finish.set()
    detail = sluice.runs.get(sluice.runs.list(1)[0].id)
    assert detail.run.state == "Cancelled"
    assert {t.run.state for t in detail.task_runs} == {"Cancelled"}
    status = admin.inspect("one")
    assert status.in_use == 0 and status.waiters == []


def test_history_shares_the_sqlite_file_with_the_limits(sqlite_url: str, tmp_path: Path) -> None:
    import sqlite3

    with Limits(sqlite_url) as limits:
        limits.create("db", slots=2)

    @task(limits=["db"])
    def t() -> int:
        return 1

    @flow
    def f() -> int:
        return t.submit().result()

    assert f() == 1
    tables = {
        r[0]
        for r in sqlite3.connect(tmp_path / "sluice.db").execute(
            "SELECT name FROM sqlite_master WHERE type='table'"
        )
    }
    assert {"sluice_history_flow_runs", "sluice_history_task_runs", "sluice_limits"} <= tables
    with Limits(sqlite_url) as limits:
        assert limits.get("db").slots == 2


def test_history_can_be_turned_off(flow_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_HISTORY", "0")

    @flow
    def f() -> str | None:
        return sluice.runtime.flow_run.id

    assert f() is not None
    monkeypatch.setenv("SLUICE_HISTORY", "1")
    assert sluice.runs.list(5) == []


def test_retention_keeps_the_newest_runs(flow_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_HISTORY_KEEP", "2")

    @flow
    def f() -> None:
        pass

    for _ in range(4):
        f()
    assert len(sluice.runs.list(10)) == 2


def test_the_default_runner_never_leaves_granted_slots_waiting_for_a_worker(
    admin: Limits,
) -> None:
    admin.create("wide", slots=20)
    workers = ThreadPoolTaskRunner().max_workers
    # "unlimited" is no limit: the recorder checks that at most `workers` of those ran.
    holdings = Holdings(slots={"wide": 20, "unlimited": workers})

    @task(limits=["wide"])
    def held(i: int) -> int:
        with holdings.holding("wide"):
            holdings.wait_full("wide", 20)  # every granted slot gets a worker at once
            simulate_work(0.2)
        return i

    @task
    def unlimited(i: int) -> int:
        with holdings.holding("unlimited"):
            simulate_work(0.05)
        return i

    @flow  # the default runner: min(32, CPUs + 4) workers for task runs without limits
    def f() -> str:
        done = [x.result(timeout=30) for x in held.map(range(60))]
        assert done == list(range(60))
        assert [x.result(timeout=30) for x in unlimited.map(range(60))] == list(range(60))
        return sluice.runtime.flow_run.id or ""

    run_id = f()
    peaks = holdings.check()
    assert peaks["wide"] == 20  # every slot used, never more
    assert 1 <= peaks["unlimited"] <= workers  # unlimited task runs keep a bounded pool
    detail = sluice.runs.get(run_id)
    waited_for_worker = [
        s.message
        for t in detail.task_runs
        if t.run.task == "held"
        for s in t.states
        if s.name == "Waiting" and s.limit is None
    ]
    assert waited_for_worker == []


def test_max_workers_below_the_slots_warns_once_per_flow_run_naming_the_numbers(
    admin: Limits, caplog: pytest.LogCaptureFixture
) -> None:
    admin.create("api", slots=8)

    @task(limits=["api"])
    def call(i: int) -> int:
        simulate_work(0.05)
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def f() -> int:
        return sum(x.result(timeout=30) for x in call.map(range(12)))

    with caplog.at_level(logging.WARNING, logger="sluice.flows"):
        assert f() == sum(range(12))
        assert f() == sum(range(12))
    traps = [r.getMessage() for r in caplog.records if "max_workers trap" in r.getMessage()]
    assert len(traps) == 2, traps  # once per flow run
    assert "'api' (8 slots)" in traps[0] and "at most 2" in traps[0]
    assert "max_workers=8 or more" in traps[0]
