"""The seed at scale: N submitted tasks behind one limit of 20, through flows, on every store.

Each row runs one flow per worker process (1 process submitting N tasks, or 4 each
submitting N/4), every task ``time.sleep(0.1)`` with ``limits=["seed"]`` (20 slots),
run history on, on ``ThreadPoolTaskRunner(max_workers=20)`` or the default runner;
the "async def tasks" rows run ``async def`` bodies (``await asyncio.sleep(0.1)``) from
an ``async def`` flow on the default runner (every body on one event loop).
Ideal makespan = N x 0.1 / 20. Task bodies record their own start and end
(``time.time()``, one clock for every process on the host), so the figures are
what the user sees:

* makespan / ideal: first body start to last body end, over the ideal;
* longest stretch with NO task body running between the first start and the last end;
* the most task runs running at once (must be exactly 20);
* connections each process opened to the store (SQLite: files opened; Redis and
  PostgreSQL: TCP connections), against the store's pool size;
* peak RSS growth of a worker process from just before its first submit.

Same-run baseline: ``ThreadPoolExecutor(20)`` running the same N sleeps, no limits.
The trivial row submits N bodies that do nothing, on SQLite: task runs per second
(target >= 5,000), against the same bodies on ``ThreadPoolExecutor(20)``; the same
run also times them with the limit but no run history, with history but no limit,
and with neither, to show where the time goes.

Each row also reports, from the same run, the longest full garbage collection
(CPython's generation 2, timed with ``gc.callbacks`` in every worker process): it
stops every thread, so no stretch with nothing running can be shorter than it.

Run: ``python benchmarks/flows_scale.py`` (all rows; N = 10,000 rows take about a minute
each), or narrow it: ``--n 1000 --stores sqlite --runners 20 --procs 1``.
Redis and PostgreSQL rows need the servers of the test suite (127.0.0.1:6379,
127.0.0.1:5432 database ``test``); rows whose server is unreachable are skipped, saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from _common import Row, print_table, temp_sqlite_url

SLOTS = 20
JOB_SECONDS = 0.1
REDIS = ("127.0.0.1", 6379)
POSTGRES = ("127.0.0.1", 5432)
PG_DSN = os.environ.get("SLUICE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


# --------------------------------------------------------------------------- one worker


def _count_connections() -> dict[str, int]:
    """Count, from now on, connections this process opens to any store.

    SQLite: database files opened; Redis: TCP connects to its port (redis-py connects
    through Python sockets); PostgreSQL: psycopg connections (libpq connects in C).
    """
    counts = {"opened": 0}

    def counted(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts["opened"] += 1
            return fn(*args, **kwargs)

        return wrapper

    import sqlite3

    sqlite3.connect = counted(sqlite3.connect)
    socket_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and address[1:2] == (REDIS[1],):
            counts["opened"] += 1
        socket_connect(sock, address)

    socket.socket.connect = connect  # type: ignore[method-assign, assignment]
    try:
        import psycopg

        sync_connect = psycopg.Connection.connect.__func__  # type: ignore[attr-defined]
        psycopg.Connection.connect = classmethod(counted(sync_connect))  # type: ignore[method-assign, assignment]
    except ImportError:
        pass
    return counts


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(url: str, n: int, workers: int | None, bodies: str, start_at: float) -> None:
    """Run one flow submitting ``n`` tasks; print a JSON report on stdout.

    ``bodies``: "sleep" (sync, time.sleep), "trivial" (sync, nothing), "free" (sync,
    nothing, no limit) or "async" (``async def`` bodies awaiting asyncio.sleep, in an
    ``async def`` flow).
    """
    os.environ["SLUICE_URL"] = url
    os.environ["SLUICE_PROGRESS"] = "0"
    counts = _count_connections()
    import asyncio
    import gc

    full_collections: list[float] = []
    collecting: list[float] = []

    def timed(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            collecting[:] = [time.perf_counter()]
        elif collecting:
            full_collections.append(time.perf_counter() - collecting.pop())

    gc.callbacks.append(timed)

    from sluice import flow, task, wait
    from sluice.runners import ThreadPoolTaskRunner

    intervals: list[tuple[float, float]] = []

    def body(i: int) -> int:
        began = time.time()
        if bodies == "sleep":
            time.sleep(JOB_SECONDS)
        intervals.append((began, time.time()))
        return i

    async def async_body(i: int) -> int:
        began = time.time()
        await asyncio.sleep(JOB_SECONDS)
        intervals.append((began, time.time()))
        return i

    runner = ThreadPoolTaskRunner(workers) if workers else None

    def check(futures: list[Any]) -> None:
        failed = [f for f in futures if f.exception() is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} task runs failed: {failed[0].exception()!r}")

    if bodies == "async":
        async_job = task(limits=["seed"], name="job")(async_body)

        @flow(name="scale", task_runner=runner)
        async def scale_async() -> None:
            futures = [async_job.submit(i) for i in range(n)]
            for future in futures:
                await future
            check(futures)

        def scale() -> None:
            asyncio.run(scale_async())

    else:
        job = task(limits=None if bodies == "free" else ["seed"], name="job")(body)

        @flow(name="scale", task_runner=runner)
        def scale() -> None:
            futures = [job.submit(i) for i in range(n)]
            wait(futures)
            check(futures)

    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    rss_before = _rss_mb()
    del full_collections[:]
    called = time.time()
    scale()
    ended = time.time()
    gc.callbacks.remove(timed)
    print(
        json.dumps(
            {
                "intervals": intervals,
                "called": called,
                "ended": ended,
                "connections": counts["opened"],
                "rss_growth_mb": _rss_mb() - rss_before,
                "full_collections": full_collections,
            }
        )
    )


# --------------------------------------------------------------------------- stores


def _reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1.0):
            return True
    except OSError:
        return False


@contextmanager
def store(kind: str) -> Iterator[tuple[str, int]]:
    """Yield (fresh store URL, its connection pool size) with limit ``seed`` created."""
    from sluice import Limits

    if kind == "sqlite":
        with temp_sqlite_url("scale") as (url, _):
            with Limits(url) as limits:
                limits.create("seed", slots=SLOTS)
            yield url, 1
        return
    if kind == "redis":
        prefix = f"bench-{uuid.uuid4().hex[:10]}"
        url = f"redis://{REDIS[0]}:{REDIS[1]}/0?prefix={prefix}"
        with Limits(url) as limits:
            limits.create("seed", slots=SLOTS)
        try:
            yield url, _pool_size(url)
        finally:
            import redis

            with redis.Redis(*REDIS) as client:
                keys = list(client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
                for start in range(0, len(keys), 500):
                    client.delete(*keys[start : start + 500])
        return
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    url = f"{PG_DSN}?schema={schema}"
    with Limits(url) as limits:
        limits.create("seed", slots=SLOTS)
    try:
        yield url, _pool_size(url)
    finally:
        import psycopg

        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                (f"%{schema}%",),
            )
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _pool_size(url: str) -> int:
    from sluice.store import acquire_store, release_store

    opened = acquire_store(url)
    try:
        return int(getattr(opened, "pool_size", 0))
    finally:
        release_store(opened)


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Result:
    """What one configuration measured, over every worker process."""

    makespan: float
    gap: float
    peak: int
    connections: int
    rss_growth_mb: float
    wall: float
    completed: int
    longest_full_gc: float
    """Seconds: the longest generation-2 collection in any worker during the run."""


def run(
    kind: str,
    n: int,
    workers: int | None,
    procs: int,
    bodies: str = "sleep",
    history: bool = True,
) -> Result:
    """Run one configuration in fresh worker processes; merge their reports."""
    env = {**os.environ, "SLUICE_HISTORY": "1" if history else "0"}
    with store(kind) as (url, _):
        start_at = time.time() + 2.0  # every worker imported and ready
        share = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        children = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    url,
                    str(count),
                    str(workers or 0),
                    bodies,
                    repr(start_at),
                ],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for count in share
        ]
        reports = []
        for child in children:
            out, _ = child.communicate(timeout=3600)
            if child.returncode != 0:
                raise RuntimeError(f"a worker failed (exit {child.returncode})")
            reports.append(json.loads(out.strip().splitlines()[-1]))
    intervals = sorted(tuple(i) for r in reports for i in r["intervals"])
    first = min(a for a, _ in intervals)
    last = max(b for _, b in intervals)
    return Result(
        makespan=last - first,
        gap=_longest_gap(intervals),
        peak=_peak(intervals),
        connections=max(r["connections"] for r in reports),
        rss_growth_mb=max(r["rss_growth_mb"] for r in reports),
        wall=max(r["ended"] for r in reports) - min(r["called"] for r in reports),
        completed=len(intervals),
        longest_full_gc=max((g for r in reports for g in r["full_collections"]), default=0.0),
    )


def _peak(intervals: Sequence[tuple[float, float]]) -> int:
    events = sorted([(b, -1) for _, b in intervals] + [(a, 1) for a, _ in intervals])
    peak = now = 0
    for _, delta in events:
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


def pool_baseline(n: int, trivial: bool = False) -> float:
    """Seconds ThreadPoolExecutor(20) takes for the same N bodies, no limits."""

    def body(i: int) -> int:
        if not trivial:
            time.sleep(JOB_SECONDS)
        return i

    with ThreadPoolExecutor(SLOTS) as pool:
        list(pool.map(lambda i: i, range(SLOTS)))
        started = time.perf_counter()
        list(pool.map(body, range(n)))
        return time.perf_counter() - started


# --------------------------------------------------------------------------- the table


def trivial_rows(n: int) -> list[Row]:
    """Trivial bodies on SQLite: task runs/s as users run them, and what each part costs."""
    base = n / pool_baseline(n, trivial=True)
    both = n / run("sqlite", n, 20, 1, "trivial").wall
    rows = [
        Row(
            f"sqlite N={n:,} trivial bodies: task runs/s",
            both,
            "/s",
            "ThreadPoolExecutor(20)",
            base,
            ">= 5,000/s",
            both >= 5_000,
            digits=0,
        )
    ]
    parts = [
        ("limit, no run history", "trivial", False),
        ("run history, no limit", "free", True),
        ("no limit, no run history", "free", False),
    ]
    for label, bodies, history in parts:
        rate = n / run("sqlite", n, 20, 1, bodies, history=history).wall
        rows.append(
            Row(
                f"sqlite N={n:,} trivial bodies, {label}: task runs/s",
                rate,
                "/s",
                "limit and history (as above)",
                both,
                "-",
                digits=0,
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1_000, 10_000])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "redis", "postgres"])
    parser.add_argument(
        "--runners",
        nargs="+",
        default=["20", "default", "async"],
        help="20: ThreadPoolTaskRunner(max_workers=20); default: the default runner; "
        "async: async def bodies in an async def flow, default runner",
    )
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--trivial", type=int, default=10_000, help="N of the trivial row (0: none)"
    )
    args = parser.parse_args(argv)

    rows: list[Row] = []
    notes: list[str] = []
    for kind in args.stores:
        address = {"redis": REDIS, "postgres": POSTGRES}.get(kind)
        if address is not None and not _reachable(address):
            notes.append(f"{kind}: no server at {address[0]}:{address[1]}, rows skipped")
            continue
        for n in args.n:
            base = pool_baseline(n)
            ideal = n * JOB_SECONDS / SLOTS
            for runner in args.runners:
                for procs in args.procs:
                    workers = int(runner) if runner.isdigit() else None
                    bodies = "async" if runner == "async" else "sleep"
                    shape = {"default": "default runner", "async": "async def tasks"}.get(
                        runner, f"max_workers={runner}"
                    )
                    what = f"{kind} N={n:,} {shape}"
                    what += f" {procs}p"
                    result = run(kind, n, workers, procs, bodies)
                    target = 1.03 if kind == "sqlite" else 1.05
                    big = n >= 1_000
                    rows.append(
                        Row(
                            f"{what}: makespan / ideal",
                            result.makespan / ideal,
                            "",
                            "ThreadPoolExecutor(20)",
                            base / ideal,
                            f"<= {target}" if big else "-",
                            result.makespan / ideal <= target if big else None,
                        )
                    )
                    rows.append(
                        Row(
                            f"{what}: longest stretch, nothing running",
                            result.gap * 1000,
                            "ms",
                            "longest full GC, same run",
                            result.longest_full_gc * 1000,
                            "<= 50 ms",
                            result.gap <= 0.050,
                            digits=1,
                        )
                    )
                    rows.append(
                        Row(
                            f"{what}: most running at once",
                            result.peak,
                            "",
                            "limit slots",
                            SLOTS,
                            f"== {SLOTS}",
                            result.peak == SLOTS,
                            digits=0,
                        )
                    )
                    rows.append(
                        Row(
                            f"{what}: connections opened / process",
                            result.connections,
                            "",
                            "-",
                            None,
                            digits=0,
                        )
                    )
                    if n >= 10_000:
                        rows.append(
                            Row(
                                f"{what}: peak RSS growth",
                                result.rss_growth_mb,
                                "MB",
                                "-",
                                None,
                                "<= 100 MB",
                                result.rss_growth_mb <= 100,
                                digits=1,
                            )
                        )
                    if result.completed != n:
                        notes.append(f"{what}: only {result.completed} of {n} bodies ran")
                    print(f"  ... {what}: {result}", file=sys.stderr, flush=True)
    if args.trivial and "sqlite" in args.stores:
        rows += trivial_rows(args.trivial)
    print_table(
        "Flows at scale: N tasks x 0.1 s behind one limit of 20 slots, history on",
        rows,
        [
            "makespan: first task body start to last body end, over all processes; "
            "ideal = N x 0.1 s / 20",
            "Np: N/P tasks submitted by each of P processes, each running its own flow",
            *notes,
        ],
        markdown=args.markdown,
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, url, count, workers, bodies, start_at = sys.argv
        worker(url, int(count), int(workers) or None, bodies, float(start_at))
    else:
        main()
