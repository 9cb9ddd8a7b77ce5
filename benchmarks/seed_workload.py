"""The seed workload: 100 jobs of 0.2 s through a limit of 20, over 4 processes.

Each of 4 spawned processes runs 25 jobs, one thread per job; every thread of
every process starts at the same instant (a cross-process barrier, then an
event). A job is ``with limits.concurrency(name): time.sleep(0.2)``. With no idle
capacity the makespan is 100 * 0.2 / 20 = 1.0 s; target makespan / ideal <= 1.03.
Each job also records when it held the slot, so the run checks independently
that no more than 20 ran at once.

Baseline, same run: the same 100 jobs in one process through a
``threading.Semaphore(20)``. A second table runs the workload on a PostgreSQL
store (if a server answers, see ``_postgres.py``) against the same baseline.

Run: ``python benchmarks/seed_workload.py``
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from multiprocessing.synchronize import Barrier as BarrierType
from typing import Any

from _common import Row, parse_args, print_table, reap, temp_sqlite_url
from _postgres import pg_unavailable, pg_version, skip_note, temp_pg_url
from _redis import available, redis_skip_note, redis_version, temp_redis_url
from sluice import Limits

LIMIT = "seed"
JOBS = 100
SLOTS = 20
JOB_SECONDS = 0.2
PROCESSES = 4
IDEAL = JOBS * JOB_SECONDS / SLOTS  # 1.0 s
TIMEOUT = 60.0

Interval = tuple[float, float]  # (slot held from, slot held until), time.monotonic()


class Jobs:
    """Threads that each wait for :meth:`start`, then hold ``slot()`` for JOB_SECONDS."""

    def __init__(self, count: int, slot: Callable[[], AbstractContextManager[object]]) -> None:
        self.held: list[Interval] = []
        self._go = threading.Event()
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._slot = slot
        self._threads = [threading.Thread(target=self._job, daemon=True) for _ in range(count)]
        for t in self._threads:
            t.start()
        time.sleep(0.1)  # let every thread reach the start line

    def _job(self) -> None:
        self._go.wait()
        try:
            with self._slot():
                start = time.monotonic()
                time.sleep(JOB_SECONDS)
                end = time.monotonic()
            with self._lock:
                self.held.append((start, end))
        except BaseException as exc:
            with self._lock:
                self._errors.append(exc)

    def start(self) -> float:
        """Release every thread at once; return the start instant."""
        started = time.monotonic()
        self._go.set()
        return started

    def join(self) -> list[Interval]:
        """Wait for every job; re-raise the first job error."""
        for t in self._threads:
            t.join(TIMEOUT)
        if self._errors:
            raise self._errors[0]
        return self.held


def _worker(url: str, jobs: int, barrier: BarrierType, out: Any) -> None:
    """One process: 25 job threads, released together after the cross-process barrier."""
    try:
        with Limits(url) as limits:
            limits.inspect(LIMIT)  # open the store before the clock starts
            run = Jobs(jobs, lambda: limits.concurrency(LIMIT, timeout=TIMEOUT))
            barrier.wait(TIMEOUT)
            started = run.start()
            held = run.join()
        out.put((started, held, None))
    except BaseException as exc:
        out.put((0.0, [], repr(exc)))


def sluice_run(url: str) -> tuple[float, list[Interval]]:
    """Run the workload over PROCESSES spawned processes; return (start, intervals)."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(url, JOBS // PROCESSES, barrier, out))
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    starts: list[float] = []
    held: list[Interval] = []
    errors: list[str] = []
    try:
        for _ in procs:
            started, intervals, error = out.get(timeout=120)
            if error:
                errors.append(error)
                break
            starts.append(started)
            held.extend(intervals)
    finally:
        reap(procs, errors)
    return min(starts), held


def semaphore_run() -> tuple[float, list[Interval]]:
    """The same jobs in one process through threading.Semaphore(SLOTS)."""
    sem = threading.Semaphore(SLOTS)
    run = Jobs(JOBS, lambda: sem)
    started = run.start()
    return started, run.join()


def max_overlap(intervals: Sequence[Interval]) -> int:
    """The most intervals that overlap at any instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = now = 0
    for _, delta in events:  # at equal times an end (-1) sorts before a start (+1)
        now += delta
        peak = max(peak, now)
    return peak


def store_run(url: str) -> tuple[float, list[Interval]]:
    """Create the limit on ``url`` and run the workload there."""
    with Limits(url) as limits:
        limits.create(LIMIT, slots=SLOTS)
    return sluice_run(url)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__ or "", argv)
    with temp_sqlite_url("seed") as (url, _):
        start, held = store_run(url)
    base_start, base_held = semaphore_run()
    report("", start, held, base_start, base_held, args.markdown)
    if available():
        with temp_redis_url("seed") as url:
            start, held = store_run(url)
        report(
            f", Redis {redis_version()} store", start, held, base_start, base_held, args.markdown
        )
    else:
        redis_skip_note()
    reason = pg_unavailable()
    if reason:
        skip_note(reason)
        return
    with temp_pg_url("seed") as url:
        start, held = store_run(url)
    report(f", PostgreSQL {pg_version()} store", start, held, base_start, base_held, args.markdown)


def report(
    store: str,
    start: float,
    held: list[Interval],
    base_start: float,
    base_held: list[Interval],
    markdown: bool,
) -> None:
    """Print the table for one store's run against the Semaphore baseline."""
    if len(held) != JOBS:
        raise RuntimeError(f"expected {JOBS} jobs to finish, got {len(held)}")
    makespan = max(e for _, e in held) - start
    base_makespan = max(e for _, e in base_held) - base_start
    peak, base_peak = max_overlap(held), max_overlap(base_held)
    rows = [
        Row(
            "makespan / ideal, 4 processes",
            makespan / IDEAL,
            "",
            "Semaphore(20), 1 process",
            base_makespan / IDEAL,
            "<= 1.03",
            makespan / IDEAL <= 1.03,
        ),
        Row("makespan", makespan, "s", "Semaphore(20), 1 process", base_makespan),
        Row(
            "max concurrent holders",
            peak,
            "",
            "Semaphore(20), 1 process",
            base_peak,
            f"<= {SLOTS}",
            peak <= SLOTS,
            digits=0,
        ),
    ]
    print_table(
        f"Seed workload{store}: {JOBS} jobs x {JOB_SECONDS:g} s, limit {SLOTS}, "
        f"{PROCESSES} processes x {JOBS // PROCESSES} threads",
        rows,
        [
            f"ideal = {JOBS} x {JOB_SECONDS:g} s / {SLOTS} = {IDEAL:g} s; makespan runs from "
            "the barrier to the last job's end (time.monotonic, system-wide)",
            "max concurrent holders counts overlapping [acquired, released) intervals "
            "recorded inside the held block",
        ],
        markdown=markdown,
    )


if __name__ == "__main__":
    main()
