"""DaskTaskRunner on real LocalClusters with worker processes: where bodies run, futures
passed as Dask futures, limits across flows sharing a cluster, dead workers, timeouts,
adaptive clusters, a scheduler that cannot be reached or goes away."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sluice.runs
import sluice.runtime
from sluice import Limits, SluiceError, StateName, TaskTimeoutError, flow, wait
from sluice.errors import ConfigError

try:
    import distributed
except ImportError:  # CI installs sluice[dask]: there a missing distributed is a failure
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail("CI=true and distributed is not installed: pip install 'sluice[dask]'")
    pytest.skip("distributed is not installed: pip install 'sluice[dask]'", allow_module_level=True)

from conformance._helpers import SRC_DIR, child_env, peak_units, wait_until
from flows import _dask_tasks as tasks
from sluice.runners import DaskTaskRunner

CLUSTER = {"processes": True, "dashboard_address": ":0"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.LocalCluster]:
    """One LocalCluster (2 worker processes x 2 threads) shared by this module's tests."""
    with distributed.LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=2, threads_per_worker=2, **CLUSTER
    ) as local:
        yield local


def _task_on(cluster: distributed.LocalCluster, key: str) -> Any:
    """The scheduler's state of a task (the scheduler runs in this process), or None."""
    scheduler = cluster.scheduler
    assert scheduler is not None
    return scheduler.tasks.get(key)


def _peak(intervals: list[tuple[float, float, int]]) -> int:
    """The most bodies running at once, from their own (start, end, 1) times."""
    return peak_units(intervals)[0]


def _states(run_id: str) -> dict[str, list[Any]]:
    """Each task's state records, by task name then task run."""
    detail = sluice.runs.get(run_id)
    return {t.run.id: list(t.states) for t in detail.task_runs}


def test_without_distributed_the_runner_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ConfigError, match=r"pip install 'sluice\[dask\]'"):
        DaskTaskRunner()


@pytest.mark.slow
def test_bodies_run_on_the_cluster_and_futures_pass_as_dask_futures(
    cluster: distributed.LocalCluster, flow_url: str
) -> None:
    address = cluster.scheduler_address

    @flow(task_runner=DaskTaskRunner(address=address))
    def on_dask() -> dict[str, Any]:
        here = tasks.where.submit()
        doubled = tasks.double_async.submit(21)
        a, b = tasks.numbers.submit(3), tasks.numbers.submit(4)
        summed = tasks.total.submit([a, b], {"more": b})
        wait([here, doubled, summed])
        keys = {f.task_run_id: f"{name}-{f.task_run_id}" for name, f in _named(a, b, summed)}
        return {
            "where": here.result(),
            "where_id": here.task_run_id,
            "doubled": doubled.result(),
            "total": summed.result(),
            "a": a.result(),
            "deps": {d.key for d in _task_on(cluster, keys[summed.task_run_id]).dependencies},
            "upstream": {keys[a.task_run_id], keys[b.task_run_id]},
            "flow_run_id": sluice.runtime.flow_run.id,
        }

    got = on_dask()
    pid, key, task_run_id, seen_address = got["where"]
    assert pid != os.getpid()  # in a worker process
    assert key == f"where-{got['where_id']}" and task_run_id == got["where_id"]
    assert seen_address == address  # get_dask_client() in a sync body
    assert got["doubled"] == (42, address)  # an async body, and get_dask_client() there
    assert got["total"] == 0 + 1 + 2 + (0 + 1 + 2 + 3) * 2
    assert got["a"] == [0, 1, 2]
    assert got["deps"] == got["upstream"]  # handed to Dask as Dask futures: no round trip
    for states in _states(got["flow_run_id"]).values():
        names = [s.name for s in states]
        assert names == ["Pending", "Waiting", "Running", "Completed"], names
        assert states[1].limit is None and "waiting for a worker" in states[1].message


def _named(*futures: Any) -> list[tuple[str, Any]]:
    return [(f._run.name, f) for f in futures]


@pytest.mark.slow
def test_two_flows_in_two_processes_sharing_one_cluster_never_exceed_a_limit(
    cluster: distributed.LocalCluster, sqlite_url: str
) -> None:
    slots, n = 3, 12
    with Limits(sqlite_url) as limits:
        limits.create("shared", slots=slots)
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(
            target=tasks.run_shared_flow,
            args=(sqlite_url, cluster.scheduler_address, n, barrier, out),
        )
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    replies = [out.get(timeout=90) for _ in procs]
    for proc in procs:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    assert [kind for kind, _ in replies] == ["ok", "ok"], replies
    first, second = ([(a, b, n) for a, b, n in got] for _, got in replies)
    assert len(first) == len(second) == n
    assert _peak(first + second) <= slots  # 4 worker threads, yet never over the limit
    assert _peak(first + second) == slots  # and the limit was filled
    overlap = any(a < d and c < b for a, b, _ in first for c, d, _ in second)
    assert overlap  # bodies of the two flows did hold the limit at the same time


@pytest.mark.slow
def test_a_worker_killed_mid_body_crashes_its_task_run_and_frees_its_slots(
    cluster: distributed.LocalCluster, sqlite_url: str, tmp_path: Path
) -> None:
    with Limits(sqlite_url) as limits:
        limits.create("shared", slots=2)
    marker = tmp_path / "victim.pid"

    @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
    def killing() -> tuple[Any, list[Any], float]:
        doomed = tasks.victim.submit(str(marker))
        pid = wait_until(lambda: marker.read_text() if marker.exists() else None, 30, "a pid")
        others = [tasks.held.submit(0.2) for _ in range(4)]
        killed_at = time.time()
        os.kill(int(pid), signal.SIGKILL)
        doomed.wait(20)
        crashed_in = time.time() - killed_at
        wait(others)
        return doomed, [f.result() for f in others], crashed_in

    doomed, others, crashed_in = killing()
    assert doomed.state.name == StateName.CRASHED
    error = doomed.exception()
    assert isinstance(error, SluiceError) and "died while" in str(error)
    assert crashed_in < 5.0  # at once, not after a lease expiry
    assert len(others) == 4 and _peak(others) <= 2  # the others ran, within the limit
    with Limits(sqlite_url) as limits:
        assert limits.inspect("shared").in_use == 0


@pytest.mark.slow
def test_a_timed_out_body_is_timed_out_its_slots_released_and_its_dask_future_cancelled(
    cluster: distributed.LocalCluster, sqlite_url: str, tmp_path: Path
) -> None:
    with Limits(sqlite_url) as limits:
        limits.create("shared", slots=1)
    marker = tmp_path / "interrupted"

    @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
    def timing_out() -> tuple[Any, int, float, str]:
        late = tasks.overstay.submit(str(marker))
        late.wait(20)
        ended = time.time()
        with Limits(sqlite_url) as limits:
            in_use = limits.inspect("shared").in_use
        key = f"overstay-{late.task_run_id}"
        # The Dask future was cancelled: its key leaves the scheduler.
        wait_until(lambda: _task_on(cluster, key) is None, 10, f"{key} to leave the scheduler")
        after = tasks.stay.submit(0.1)  # the limit's one slot is free for the next task
        return late, in_use, ended, after.result()

    late, in_use, ended, after = timing_out()
    assert late.state.name == StateName.TIMED_OUT
    assert isinstance(late.exception(), TaskTimeoutError)
    assert in_use == 0  # released at the deadline
    assert after == "stayed"
    wait_until(marker.exists, 10, "the body's own interruption")
    kind, at = marker.read_text().split()
    assert kind == "Interrupted" and float(at) - ended < 2.0  # the body itself was stopped


@pytest.mark.slow
def test_an_adaptive_cluster_starts_workers_for_granted_task_runs(sqlite_url: str) -> None:
    with Limits(sqlite_url) as limits:
        limits.create("shared", slots=2)
    runner = DaskTaskRunner(
        cluster_kwargs={"n_workers": 0, "threads_per_worker": 2, **CLUSTER},
        adapt_kwargs={"minimum": 0, "maximum": 1, "interval": "100ms"},
    )

    @flow(task_runner=runner)
    def adaptive() -> tuple[list[tuple[float, float, int]], str | None]:
        futures = [tasks.held.submit(0.1) for _ in range(4)]
        return [f.result() for f in futures], sluice.runtime.flow_run.id

    intervals, run_id = adaptive()
    assert len(intervals) == 4 and _peak(intervals) <= 2
    assert run_id is not None
    for states in _states(run_id).values():
        names = [s.name for s in states]
        assert names[-2:] == ["Running", "Completed"], names
        waiting = [s for s in states if s.name == "Waiting" and s.limit is None]
        assert waiting, names  # granted, waiting for the cluster to start a worker
    first_wait = max(s.timestamp for t in _states(run_id).values() for s in t[:3])
    assert first_wait > 0
    why = sluice.runs.why(run_id)
    assert "waiting for a free worker" in str(why)
    assert runner._client is None  # the temporary cluster of a copy; the original is unused


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_scheduler_is_a_clear_error_before_any_task_run_starts(
    sqlite_url: str,
) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    started: list[str] = []

    @flow(task_runner=DaskTaskRunner(address=address, client_kwargs={"timeout": 1}))
    def unreachable() -> None:
        started.append("flow body")
        tasks.numbers.submit(1).result()

    with pytest.raises(ConfigError, match="could not reach the Dask scheduler at") as info:
        unreachable()
    assert address in str(info.value)
    assert started == []
    assert sluice.runs.list() == []


_SCHEDULER = """
import threading
from distributed import LocalCluster
cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                       dashboard_address=":0")
print(cluster.scheduler_address, flush=True)
threading.Event().wait()  # until the test kills this process
"""


@pytest.mark.slow
def test_a_scheduler_that_goes_away_fails_its_task_runs_and_releases_every_lease(
    sqlite_url: str,
) -> None:
    with Limits(sqlite_url) as limits:
        limits.create("shared", slots=2)
    # The scheduler unpickles the task graph: it imports what the tests' bodies import.
    tests_dir = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCHEDULER],
        env=child_env(PYTHONPATH=os.pathsep.join((SRC_DIR, tests_dir))),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()

        @flow(task_runner=DaskTaskRunner(address=address))
        def stranded() -> tuple[Any, Any, int]:
            running = tasks.stay.submit(20.0)
            wait_until(lambda: running.state.name == StateName.RUNNING, 30, "a running body")
            proc.kill()  # the scheduler (and its worker) vanish mid-body
            running.wait(20)
            later = tasks.stay.submit(0.1)
            later.wait(20)
            with Limits(sqlite_url) as limits:
                in_use = limits.inspect("shared").in_use
            return running, later, in_use

        running, later, in_use = stranded()
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert running.state.name == StateName.FAILED
    assert "Dask scheduler" in str(running.exception()) and "went away" in str(running.exception())
    assert later.state.name == StateName.FAILED
    assert in_use == 0
