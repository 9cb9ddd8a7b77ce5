"""The seed workload through DaskTaskRunner: N tasks x 0.1 s behind one limit of 20 slots.

One flow submits N tasks, every task ``time.sleep(0.1)`` with ``limits=["seed"]``
(20 slots), run history on, on ``DaskTaskRunner`` with a ``LocalCluster`` of 4 worker
processes x 8 threads (32 worker threads: never the bottleneck), twice: as the runner's
temporary cluster (its scheduler then runs in the flow's process, as LocalCluster's
always does), and started in a process of its own, reached with ``address=``; and the
same run through ``ThreadPoolTaskRunner(20)`` as the same-run baseline. Ideal
makespan = N x 0.1 / 20. Task bodies return their own start and end
(``time.time()``, one clock for every process on the host), so the figures are
what the user sees:

* makespan / ideal: first body start to last body end, over the ideal;
* the most task runs running at once (must be exactly 20: admission stays in the
  flow's process, and only granted task runs reach the cluster);
* the per-task overhead Dask adds: (Dask makespan - thread makespan) x 20 / N, the
  time each of the 20 slots spends per task on hand-over to the cluster and the
  report of the body's end, beyond what the thread runner spends; next to Dask's own
  floor: the same bodies on the same kind of cluster with no Sluice, a client keeping
  20 in flight (each done callback submits the next);
* the longest stretch with no body running between the first start and the last end.

Run: ``python benchmarks/flows_dask.py`` (SQLite and Redis; about a minute), or
narrow it: ``--n 1000 --stores sqlite``. Redis needs the test suite's server at
127.0.0.1:6379; if it is unreachable its rows are skipped, saying so.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from _common import Row, print_table, temp_sqlite_url

SLOTS = 20
JOB_SECONDS = 0.1
WORKERS, THREADS = 4, 8
REDIS = ("127.0.0.1", 6379)


def body(i: int) -> tuple[float, float]:
    """One seed task: sleep 0.1 s; its own start and end."""
    began = time.time()
    time.sleep(JOB_SECONDS)
    return began, time.time()


@contextmanager
def store(kind: str) -> Iterator[str]:
    """Yield a fresh store URL with limit ``seed`` (20 slots) created."""
    from sluice import Limits

    if kind == "sqlite":
        with temp_sqlite_url("dask") as (url, _):
            with Limits(url) as limits:
                limits.create("seed", slots=SLOTS)
            yield url
        return
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    url = f"redis://{REDIS[0]}:{REDIS[1]}/0?prefix={prefix}"
    with Limits(url) as limits:
        limits.create("seed", slots=SLOTS)
    try:
        yield url
    finally:
        import redis

        with redis.Redis(*REDIS) as client:
            keys = list(client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])


@dataclass(frozen=True)
class Result:
    """What one flow run measured."""

    makespan: float
    peak: int
    gap: float
    completed: int


CLUSTER = {
    "n_workers": WORKERS,
    "threads_per_worker": THREADS,
    "processes": True,
    "dashboard_address": ":0",
}

_CLUSTER_PROCESS = f"""
import sys
from distributed import LocalCluster
if __name__ == "__main__":
    with LocalCluster(**{CLUSTER!r}) as cluster:
        print(cluster.scheduler_address, flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin
"""


@contextmanager
def cluster_process() -> Iterator[str]:
    """A LocalCluster (its scheduler too) in a process of its own; yield its address."""
    with tempfile.TemporaryDirectory(prefix="sluice-bench-dask-") as directory:
        script = os.path.join(directory, "cluster.py")
        with open(script, "w") as out:
            out.write(_CLUSTER_PROCESS)
        proc = subprocess.Popen(
            [sys.executable, script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            yield proc.stdout.readline().strip()
        finally:
            proc.stdin.close()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            proc.stdout.close()


def run(url: str, n: int, address: str | None = None, dask: bool = True) -> Result:
    """One flow of ``n`` seed tasks on ``url``: on a temporary LocalCluster, on the
    cluster at ``address``, or (``dask=False``) on ThreadPoolTaskRunner(20)."""
    os.environ["SLUICE_URL"] = url
    os.environ["SLUICE_PROGRESS"] = "0"
    from sluice import flow, task, wait
    from sluice.runners import DaskTaskRunner, TaskRunner, ThreadPoolTaskRunner

    runner: TaskRunner = ThreadPoolTaskRunner(SLOTS)
    if dask:
        runner = (
            DaskTaskRunner(address=address) if address else DaskTaskRunner(cluster_kwargs=CLUSTER)
        )
    job = task(limits=["seed"], name="job")(body)

    @flow(name="dask-seed", task_runner=runner)
    def seed() -> list[tuple[float, float]]:
        futures = [job.submit(i) for i in range(n)]
        wait(futures)
        return [f.result() for f in futures]

    intervals = sorted(seed())
    first = min(a for a, _ in intervals)
    last = max(b for _, b in intervals)
    return Result(last - first, _peak(intervals), _longest_gap(intervals), len(intervals))


def dask_alone(n: int, address: str | None = None) -> Result:
    """The floor: the same N bodies on Dask alone, no Sluice, 20 in flight (each done
    callback submits the next), on the cluster at ``address`` or a fresh LocalCluster."""
    import threading

    import distributed

    cluster = None if address else distributed.LocalCluster(**CLUSTER)  # type: ignore[no-untyped-call]
    client = distributed.Client(address or cluster, set_as_default=False)  # type: ignore[no-untyped-call]
    try:
        lock, done = threading.Lock(), threading.Event()
        futures: list[distributed.Future[tuple[float, float]]] = []

        def submit_next(_: object = None) -> None:
            with lock:
                i = len(futures)
                if i >= n:
                    if all(f.done() for f in futures):  # type: ignore[no-untyped-call]
                        done.set()
                    return
                future = client.submit(body, i, key=f"alone-{i}", pure=False)
                futures.append(future)
            future.add_done_callback(submit_next)  # type: ignore[no-untyped-call]

        for _ in range(SLOTS):
            submit_next()
        done.wait(600)
        intervals = sorted(client.gather(futures))  # type: ignore[no-untyped-call]
    finally:
        client.close()  # type: ignore[no-untyped-call]
        if cluster is not None:
            cluster.close()
    first = min(a for a, _ in intervals)
    last = max(b for _, b in intervals)
    return Result(last - first, _peak(intervals), _longest_gap(intervals), len(intervals))


def _peak(intervals: Sequence[tuple[float, float]]) -> int:
    events = sorted([(b, -1) for _, b in intervals] + [(a, 1) for a, _ in intervals])
    peak = now = 0
    for _, delta in events:  # at equal times an end (-1) sorts before a start
        now += delta
        peak = max(peak, now)
    return peak


def _longest_gap(intervals: Sequence[tuple[float, float]]) -> float:
    """The longest time between the first start and the last end with no interval open."""
    gap = 0.0
    covered_to = intervals[0][0]
    for start, end in intervals:  # sorted by start
        if start > covered_to:
            gap = max(gap, start - covered_to)
        covered_to = max(covered_to, end)
    return gap


def _reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1.0):
            return True
    except OSError:
        return False


def _rows(what: str, dask: Result, threads: Result, alone: Result, n: int) -> list[Row]:
    ideal = n * JOB_SECONDS / SLOTS
    return [
        Row(
            f"{what}: makespan / ideal",
            dask.makespan / ideal,
            "",
            "ThreadPoolTaskRunner(20)",
            threads.makespan / ideal,
            "<= 1.1",
            dask.makespan / ideal <= 1.1,
        ),
        Row(
            f"{what}: most running at once",
            dask.peak,
            "",
            "ThreadPoolTaskRunner(20)",
            threads.peak,
            f"== {SLOTS}",
            dask.peak == SLOTS,
            digits=0,
        ),
        Row(
            f"{what}: makespan / ideal, against Dask alone",
            dask.makespan / ideal,
            "",
            "Dask alone, 20 in flight",
            alone.makespan / ideal,
        ),
        Row(
            f"{what}: per-task overhead over the thread runner (per slot)",
            (dask.makespan - threads.makespan) * SLOTS / n * 1000,
            "ms",
            "Dask alone over the thread runner",
            (alone.makespan - threads.makespan) * SLOTS / n * 1000,
            digits=1,
        ),
        Row(
            f"{what}: longest stretch, nothing running",
            dask.gap * 1000,
            "ms",
            "ThreadPoolTaskRunner(20)",
            threads.gap * 1000,
            "<= 50 ms",
            dask.gap <= 0.050,
            digits=1,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--n", type=int, default=1_000)
    parser.add_argument("--stores", nargs="+", default=["sqlite", "redis"])
    args = parser.parse_args(argv)
    n = args.n
    rows: list[Row] = []
    notes: list[str] = []
    alone: tuple[Result, Result] | None = None
    for kind in args.stores:
        if kind == "redis" and not _reachable(REDIS):
            notes.append(f"redis: no server at {REDIS[0]}:{REDIS[1]}, rows skipped")
            continue
        with store(kind) as url:
            threads = run(url, n, dask=False)
        with store(kind) as url:
            temporary = run(url, n)
        measured = [("threads", threads), ("temporary", temporary)]
        with cluster_process() as address, store(kind) as url:
            own = run(url, n, address)
            measured.append(("address", own))
            if alone is None:  # Dask alone does not depend on the store: measured once
                alone = (dask_alone(n), dask_alone(n, address))
                measured += [("alone, temporary", alone[0]), ("alone, address", alone[1])]
        for label, result in measured:
            print(f"  ... {kind} {label}: {result}", file=sys.stderr, flush=True)
            if result.completed != n:
                notes.append(f"{kind} {label}: only {result.completed} of {n} bodies ran")
        for where, dask, floor in (
            ("temporary cluster", temporary, alone[0]),
            ("address=", own, alone[1]),
        ):
            rows += _rows(f"{kind} N={n:,} Dask, {where}", dask, threads, floor, n)
    print_table(
        f"Flows on Dask: N tasks x 0.1 s behind one limit of 20 slots, LocalCluster of "
        f"{WORKERS} worker processes x {THREADS} threads, history on",
        rows,
        [
            "makespan: first task body start to last body end; ideal = N x 0.1 s / 20",
            "overhead per task: (Dask makespan - thread makespan) x 20 / N: the time each of "
            "the 20 slots spends per task beyond the thread runner",
            "Dask alone: the same bodies on the same kind of cluster without Sluice, a "
            "client keeping 20 in flight (each done callback submits the next): Dask's floor",
            "temporary cluster: DaskTaskRunner(cluster_kwargs=...), scheduler in the flow's "
            "process; address=: the same LocalCluster in a process of its own",
            *notes,
        ],
        markdown=args.markdown,
    )


if __name__ == "__main__":
    main()
