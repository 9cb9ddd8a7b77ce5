"""Flow overhead: 5,000 trivial tasks submitted in one flow, with run history on.

Tasks/s = 5,000 / the whole flow call (submit, run, record, wait, flush). Target:
at least 2,000 tasks/s. The tasks take no limits: this measures the workflow
layer (futures, dispatcher, runner, states, history writer).

Baseline, same run: a plain ``concurrent.futures.ThreadPoolExecutor`` with the
same number of workers running the same function 5,000 times.

Run: ``python benchmarks/flows_overhead.py``
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as cf_wait

from _common import Row, parse_args, print_table, temp_sqlite_url

TASKS = 5_000
WORKERS = 8


def trivial(i: int) -> int:
    return i + 1


def sluice_run(url: str) -> tuple[float, int]:
    """(seconds, task runs recorded) for TASKS trivial tasks in one flow."""
    os.environ["SLUICE_URL"] = url
    os.environ["SLUICE_PROGRESS"] = "0"
    import sluice.runs
    import sluice.runtime
    from sluice import flow, task, wait
    from sluice.runners import ThreadPoolTaskRunner

    work = task(name="trivial")(trivial)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
    def many(n: int) -> str:
        wait([work.submit(i) for i in range(n)])
        return sluice.runtime.flow_run.id or ""

    many(200)  # warm-up
    started = time.perf_counter()
    run_id = many(TASKS)
    seconds = time.perf_counter() - started
    return seconds, len(sluice.runs.get(run_id).task_runs)


def pool_run() -> float:
    with ThreadPoolExecutor(WORKERS) as pool:
        cf_wait([pool.submit(trivial, i) for i in range(200)])
        started = time.perf_counter()
        cf_wait([pool.submit(trivial, i) for i in range(TASKS)])
        return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__ or "", argv)
    with temp_sqlite_url("flows-overhead") as (url, _):
        seconds, recorded = sluice_run(url)
    base = pool_run()
    if recorded != TASKS:
        raise RuntimeError(f"expected {TASKS} task runs in the history, found {recorded}")
    rate, base_rate = TASKS / seconds, TASKS / base
    rows = [
        Row(
            "tasks/s, one flow, history on",
            rate,
            "/s",
            f"ThreadPoolExecutor({WORKERS})",
            base_rate,
            ">= 2,000 /s",
            rate >= 2000,
            digits=0,
        ),
        Row(
            "per task",
            1e6 / rate,
            "us",
            f"ThreadPoolExecutor({WORKERS})",
            1e6 / base_rate,
            digits=1,
        ),
    ]
    print_table(
        f"Flow overhead: {TASKS:,} trivial tasks submitted in one flow "
        f"(ThreadPoolTaskRunner({WORKERS}), SQLite history)",
        rows,
        [
            "the flow call is timed whole: submits, dispatch, runs, states, history flush",
            f"all {TASKS:,} task runs were read back from the history afterwards",
        ],
        markdown=args.markdown,
    )


if __name__ == "__main__":
    main()
