"""Uncontended acquire+release cycles per second on one limit, one thread.

Each cycle is ``limits.acquire(name)`` followed by ``lease.release()`` on a
limit nobody else uses. Baseline, same run: raw SQLite write transactions per
second (``BEGIN IMMEDIATE; UPDATE one row; COMMIT``, WAL, synchronous=NORMAL),
one thread. A cycle needs at least two store steps (grant, release), so the
target is >= 0.3x the raw transaction rate.

Run: ``python benchmarks/throughput.py``
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from _common import Row, parse_args, print_table, raw_sqlite_transaction, temp_sqlite_url
from sluice import Limits

LIMIT = "throughput"
WARMUP_SECONDS = 0.5
MEASURE_SECONDS = 3.0


def per_second(step: Callable[[], None]) -> float:
    """Run ``step`` for WARMUP_SECONDS, then count how many complete per second."""
    end = time.perf_counter() + WARMUP_SECONDS
    while time.perf_counter() < end:
        step()
    count = 0
    start = time.perf_counter()
    end = start + MEASURE_SECONDS
    now = start
    while now < end:
        step()
        count += 1
        now = time.perf_counter()
    return count / (now - start)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__ or "", argv)
    with temp_sqlite_url("throughput") as (url, directory):
        with Limits(url) as limits:
            limits.create(LIMIT, slots=1)

            def acquire_release() -> None:
                limits.acquire(LIMIT, timeout=5).release()

            def concurrency_block() -> None:
                with limits.concurrency(LIMIT, timeout=5):
                    pass

            cycles = per_second(acquire_release)
            blocks = per_second(concurrency_block)
        with raw_sqlite_transaction(os.path.join(directory, "raw.db")) as transaction:
            txns = per_second(transaction)

    rows = [
        Row(
            "acquire+release cycles/s",
            cycles,
            "/s",
            "raw SQLite write txn/s",
            txns,
            ">= 0.3x baseline",
            cycles >= 0.3 * txns,
            digits=0,
        ),
        Row("with concurrency(): cycles/s", blocks, "/s", "raw SQLite write txn/s", txns, digits=0),
        Row(
            "acquire+release cycle time",
            1e6 / cycles,
            "us",
            "raw SQLite write txn",
            1e6 / txns,
            digits=1,
        ),
    ]
    print_table(
        "Throughput: uncontended acquire+release on one limit, one thread",
        rows,
        [f"each figure: {WARMUP_SECONDS:g} s warm-up, then {MEASURE_SECONDS:g} s counted"],
        markdown=args.markdown,
    )


if __name__ == "__main__":
    main()
