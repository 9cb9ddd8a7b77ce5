"""The process runner, crashes, and one limit honoured by two flows in two processes at once."""

from __future__ import annotations

import multiprocessing
import os

import pytest

import sluice.runs
import sluice.runtime
from conformance._helpers import Holdings
from flows import _procs
from sluice import Limits, SluiceError, TaskTimeoutError, flow, wait
from sluice.runners import ProcessPoolTaskRunner

pytestmark = pytest.mark.slow


def test_bodies_run_in_worker_processes(process_url: str) -> None:
    squares, worker_pid = _procs.in_processes()
    assert squares == [0, 1, 4, 9, 16, 25]
    assert worker_pid != os.getpid()


def test_a_dead_worker_is_crashed_its_lease_released_and_others_carry_on(
    process_url: str,
) -> None:
    with Limits(process_url) as limits:
        limits.create("shared", slots=1)

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    def f() -> tuple[str, str, str, tuple[BaseException | None, ...], list[int]]:
        crashed = _procs.die.submit()
        failed = _procs.fail_in_child.submit()
        timed_out = _procs.sleep_long.submit()
        wait([crashed, failed, timed_out])
        after = [x.result() for x in _procs.hold_briefly.map(range(3))]
        return (
            crashed.state.name,
            failed.state.name,
            timed_out.state.name,
            (crashed.exception(), failed.exception(), timed_out.exception()),
            after,
        )

    crashed, failed, timed_out, errors, after = f()
    assert (crashed, failed, timed_out) == ("Crashed", "Failed", "TimedOut")
    crash_exc, fail_exc, timeout_exc = errors
    assert isinstance(crash_exc, SluiceError) and "exit code 17" in str(crash_exc)
    assert isinstance(fail_exc, ValueError) and str(fail_exc) == "from the child"
    assert isinstance(timeout_exc, TaskTimeoutError)
    assert after == [0, 1, 2]
    with Limits(process_url) as limits:
        assert limits.inspect("shared").in_use == 0


def test_unpicklable_tasks_say_so(process_url: str) -> None:
    from sluice import InvalidRequest, task

    @task
    def local() -> int:
        return 1

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    def f() -> int:
        return local.submit().result()

    with pytest.raises(InvalidRequest, match="picklable"):
        f()


def test_a_limit_is_honoured_by_two_flows_in_two_processes_at_once(process_url: str) -> None:
    slots = 3
    with Limits(process_url) as limits:
        limits.create("shared", slots=slots)
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    holding = [ctx.Event(), ctx.Event()]
    procs = [
        ctx.Process(
            target=_procs.run_limited_flow,
            args=(process_url, 24, barrier, out, (holding[i], holding[1 - i])),
        )
        for i in range(2)
    ]
    for proc in procs:
        proc.start()
    replies = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(10)
    assert [kind for kind, _, _ in replies] == ["ok", "ok"], replies
    run_ids = [run_id for _, run_id, _ in replies]
    # What the task bodies held, recorded in both processes, never over the slots.
    holdings = Holdings(slots={"shared": slots})
    for _, _, records in replies:
        holdings.merge(records)
    assert holdings.count("shared") == 48
    holdings.check()

    intervals: list[tuple[float, float, int]] = []  # Running, per flow
    for which, run_id in enumerate(run_ids):
        detail = sluice.runs.get(run_id)
        assert detail.run.state == "Completed" and len(detail.task_runs) == 24
        for task_run in detail.task_runs:
            states = task_run.states
            for i, state in enumerate(states):
                if state.name == "Running":
                    intervals.append((state.timestamp, states[i + 1].timestamp, which))
    assert len(intervals) == 48
    events = sorted([(a, 1, w) for a, _, w in intervals] + [(b, -1, w) for _, b, w in intervals])
    peak = 0
    running = [0, 0]
    both = False
    for _, delta, which in events:  # at equal times an end (-1) sorts before a start
        running[which] += delta
        peak = max(peak, sum(running))
        both = both or (running[0] > 0 and running[1] > 0)
    assert peak <= slots  # never more than the limit, both processes together
    assert both  # tasks of the two flows did hold the limit at the same time
