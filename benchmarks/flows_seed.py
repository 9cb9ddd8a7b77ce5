"""The seed workload through flows: 100 tasks of 0.2 s on a limit of 20, in one flow.

``@task(limits=["seed"])`` sleeping 0.2 s, submitted 100 times from one flow on a
``ThreadPoolTaskRunner(max_workers=50)``, with run history on (SQLite store).
With no idle capacity the makespan is 100 * 0.2 / 20 = 1.0 s; target
makespan / ideal <= 1.03. The makespan runs from just before the first submit
to the end of the last task run as recorded in the history; the flow call as a
whole (runner start-up, history flush) is reported too. The recorded Running
intervals are checked never to overlap more than 20.

Baseline, same run: the same 100 sleeps on a ``ThreadPoolExecutor(20)`` (no limits).

Run: ``python benchmarks/flows_seed.py``
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from _common import Row, parse_args, print_table, temp_sqlite_url

JOBS = 100
SLOTS = 20
JOB_SECONDS = 0.2
IDEAL = JOBS * JOB_SECONDS / SLOTS  # 1.0 s


def _job(i: int) -> int:
    time.sleep(JOB_SECONDS)
    return i


def sluice_run(url: str) -> tuple[float, float, int]:
    """(makespan, whole flow call, peak Running overlap) of the workload as a flow."""
    os.environ["SLUICE_URL"] = url
    os.environ["SLUICE_PROGRESS"] = "0"
    import sluice.runs
    from sluice import Limits, flow, task, wait
    from sluice.runners import ThreadPoolTaskRunner

    with Limits(url) as limits:
        limits.create("seed", slots=SLOTS)

    job = task(limits=["seed"], name="job")(_job)
    starts: list[float] = []

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=50))
    def seed() -> str:
        starts.append(time.time())
        futures = [job.submit(i) for i in range(JOBS)]
        wait(futures)
        return sluice.runtime.flow_run.id or ""

    import sluice.runtime

    seed()  # warm-up: store files, threads, imports
    called = time.perf_counter()
    run_id = seed()
    whole = time.perf_counter() - called
    detail = sluice.runs.get(run_id)
    running = [
        (s.timestamp, t.states[i + 1].timestamp)
        for t in detail.task_runs
        for i, s in enumerate(t.states)
        if s.name == "Running"
    ]
    makespan = max(b for _, b in running) - starts[-1]
    return makespan, whole, _peak(running)


def _peak(intervals: Sequence[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    peak = now = 0
    for _, delta in events:
        now += delta
        peak = max(peak, now)
    return peak


def pool_run() -> float:
    """Makespan of the same sleeps on ThreadPoolExecutor(SLOTS)."""
    with ThreadPoolExecutor(SLOTS) as pool:
        list(pool.map(lambda i: i, range(SLOTS)))  # threads started
        started = time.perf_counter()
        list(pool.map(_job, range(JOBS)))
        return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__ or "", argv)
    with temp_sqlite_url("flows-seed") as (url, _):
        makespan, whole, peak = sluice_run(url)
    base = pool_run()
    rows = [
        Row(
            "makespan / ideal, flow of 100 tasks",
            makespan / IDEAL,
            "",
            "ThreadPoolExecutor(20)",
            base / IDEAL,
            "<= 1.03",
            makespan / IDEAL <= 1.03,
        ),
        Row("makespan", makespan, "s", "ThreadPoolExecutor(20)", base),
        Row("whole flow call (start-up, flush)", whole, "s", "ThreadPoolExecutor(20)", base),
        Row(
            "max Running at once (history)",
            peak,
            "",
            "limit slots",
            SLOTS,
            f"<= {SLOTS}",
            peak <= SLOTS,
            digits=0,
        ),
    ]
    print_table(
        f"Seed workload through flows: {JOBS} tasks x {JOB_SECONDS:g} s, limit {SLOTS}, "
        "ThreadPoolTaskRunner(max_workers=50), history on",
        rows,
        [
            f"ideal = {JOBS} x {JOB_SECONDS:g} s / {SLOTS} = {IDEAL:g} s; makespan from just "
            "before the first submit to the last recorded Running end",
        ],
        markdown=args.markdown,
    )


if __name__ == "__main__":
    main()
