"""Uncontended acquire+release cycles per second on one limit, one thread.

Each cycle is ``limits.acquire(name)`` followed by ``lease.release()`` on a
limit nobody else uses. Baseline, same run: raw SQLite write transactions per
second (``BEGIN IMMEDIATE; UPDATE one row; COMMIT``, WAL, synchronous=NORMAL),
one thread. A cycle needs at least two store steps (grant, release), so the
target is >= 0.3x the raw transaction rate.

A second table measures the same on a PostgreSQL store (if a server answers,
see ``_postgres.py``) against raw autocommit ``UPDATE ... RETURNING`` round
trips of one row through psycopg, with the server's default settings and again
with ``synchronous_commit=off`` for both the store and the baseline.

Run: ``python benchmarks/throughput.py``
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from _common import Row, parse_args, print_table, raw_sqlite_transaction, temp_sqlite_url
from _postgres import pg_unavailable, pg_version, raw_pg_update, skip_note, temp_pg_url
from _redis import available, raw_evalsha, redis_skip_note, redis_version, temp_redis_url
from sluice import Limits

LIMIT = "throughput"
WARMUP_SECONDS = 0.5
MEASURE_SECONDS = 3.0


def per_second(step: Callable[[], object]) -> float:
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


def store_cycles(url: str) -> tuple[float, float]:
    """(acquire+release cycles/s, concurrency() blocks/s) on a fresh limit of ``url``."""
    with Limits(url) as limits:
        limits.create(LIMIT, slots=1)

        def acquire_release() -> None:
            limits.acquire(LIMIT, timeout=5).release()

        def concurrency_block() -> None:
            with limits.concurrency(LIMIT, timeout=5):
                pass

        return per_second(acquire_release), per_second(concurrency_block)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__ or "", argv)
    with temp_sqlite_url("throughput") as (url, directory):
        cycles, blocks = store_cycles(url)
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
    redis_section(args.markdown)
    postgres_section(args.markdown)


def redis_section(markdown: bool) -> None:
    """The same cycles on a Redis store, against raw EVALSHA round trips."""
    if not available():
        redis_skip_note()
        return
    with temp_redis_url("throughput") as url:
        cycles, blocks = store_cycles(url)
    with raw_evalsha() as evalsha:
        rounds = per_second(evalsha)
    rows = [
        Row(
            "acquire+release cycles/s",
            cycles,
            "/s",
            "raw EVALSHA round trips/s",
            rounds,
            ">= 0.3x baseline",
            cycles >= 0.3 * rounds,
            digits=0,
        ),
        Row(
            "with concurrency(): cycles/s",
            blocks,
            "/s",
            "raw EVALSHA round trips/s",
            rounds,
            digits=0,
        ),
        Row(
            "acquire+release cycle time", 1e6 / cycles, "us", "raw EVALSHA", 1e6 / rounds, digits=1
        ),
    ]
    print_table(
        f"Throughput, Redis {redis_version()} store: uncontended acquire+release on one "
        "limit, one thread",
        rows,
        [
            f"each figure: {WARMUP_SECONDS:g} s warm-up, then {MEASURE_SECONDS:g} s counted",
            "a cycle is two store steps (two scripts, two round trips); the baseline is one "
            "EVALSHA of a script that returns at once, through redis-py",
        ],
        markdown=markdown,
    )


def postgres_section(markdown: bool) -> None:
    """The same cycles on a PostgreSQL store, against raw UPDATE round trips."""
    reason = pg_unavailable()
    if reason:
        skip_note(reason)
        return
    rows = []
    for label, options in (("", ""), (", synchronous_commit=off", "-c synchronous_commit=off")):
        with temp_pg_url("throughput", options) as url:
            cycles, blocks = store_cycles(url)
        with raw_pg_update(options) as update:
            rounds = per_second(update)
        rows += [
            Row(
                f"acquire+release cycles/s{label}",
                cycles,
                "/s",
                f"raw UPDATE..RETURNING/s{label}",
                rounds,
                ">= 0.3x baseline" if not label else "-",
                cycles >= 0.3 * rounds if not label else None,
                digits=0,
            ),
            Row(
                f"with concurrency(): cycles/s{label}",
                blocks,
                "/s",
                f"raw UPDATE..RETURNING/s{label}",
                rounds,
                digits=0,
            ),
            Row(
                f"acquire+release cycle time{label}",
                1e6 / cycles,
                "us",
                f"raw UPDATE..RETURNING{label}",
                1e6 / rounds,
                digits=1,
            ),
        ]
    print_table(
        f"Throughput, PostgreSQL {pg_version()} store: uncontended acquire+release on one "
        "limit, one thread",
        rows,
        [
            f"each figure: {WARMUP_SECONDS:g} s warm-up, then {MEASURE_SECONDS:g} s counted",
            "a cycle is two store steps (two round trips, two commits); the baseline is one "
            "autocommit round trip updating one row",
            "synchronous_commit=off rows: both store and baseline connect with "
            "options=-c synchronous_commit=off (commits do not wait for the WAL flush)",
        ],
        markdown=markdown,
    )


if __name__ == "__main__":
    main()
