"""Idle cost: CPU used by 200 threads blocked on a held limit for 5 s.

The main thread holds the only slot of a limit; 200 threads block in
``limits.acquire``. Once the store shows all 200 queued, the process's CPU time
(user + system, every thread, ``resource.getrusage``) is read before and after
5 s of waiting. Waiters that sleep until woken use none; a polling loop shows up
here. Target: < 0.05 CPU seconds. A second figure extends the same measurement
to 32 s, past the stores' slow safety re-check (every 24-30 s, jittered), and scales
it to 5 s.

Baseline, same run: 200 threads blocked on one ``threading.Event`` for 5 s.
A second table measures the same on a PostgreSQL store (if a server answers,
see ``_postgres.py``): its waiters sleep until a NOTIFY, or until the holder's
lease would expire (30 s here).

Run: ``python benchmarks/idle_cost.py``
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable, Sequence

from _common import Row, parse_args, print_table, temp_sqlite_url
from _postgres import pg_unavailable, pg_version, skip_note, temp_pg_url
from _redis import available, redis_skip_note, redis_version, temp_redis_url
from sluice import Limits

LIMIT = "idle"
WAITERS = 200
SECONDS = 5.0
LONG_SECONDS = 32.0  # longer than the stores' slow safety re-check (30 s, jittered down to 24)
TIMEOUT = 120.0


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def idle_cpu(
    block: Callable[[], None],
    ready: Callable[[], bool],
    wake: Callable[[], object],
    checkpoints: Sequence[float] = (SECONDS,),
) -> list[float]:
    """Start WAITERS threads running ``block``; once ``ready()``, read the CPU used so far
    at each checkpoint (seconds after the start of the measurement)."""
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            block()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=waiter, daemon=True) for _ in range(WAITERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while not ready():
        if time.monotonic() > deadline or errors:
            raise RuntimeError(f"waiters never all blocked: {errors[:1]}")
        time.sleep(0.05)
    time.sleep(0.5)  # let the last waiters settle into their sleep
    used: list[float] = []
    before = cpu_seconds()
    start = time.monotonic()
    for checkpoint in checkpoints:
        time.sleep(max(0.0, start + checkpoint - time.monotonic()))
        used.append(cpu_seconds() - before)
    wake()
    for t in threads:
        t.join(TIMEOUT)
    if errors:
        raise errors[0]
    return used


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__ or "", argv)

    event = threading.Event()
    blocked = [0]
    lock = threading.Lock()

    def wait_event() -> None:
        with lock:
            blocked[0] += 1
        event.wait()

    (base,) = idle_cpu(wait_event, lambda: blocked[0] >= WAITERS, event.set)
    with temp_sqlite_url("idle") as (url, _):
        measure(url, "", base, args.markdown)
    if available():
        with temp_redis_url("idle") as url:
            measure(url, f", Redis {redis_version()} store", base, args.markdown)
    else:
        redis_skip_note()
    reason = pg_unavailable()
    if reason:
        skip_note(reason)
        return
    with temp_pg_url("idle") as url:
        measure(url, f", PostgreSQL {pg_version()} store", base, args.markdown)


def measure(url: str, store: str, base: float, markdown: bool) -> None:
    """Block WAITERS threads on a held limit of ``url``; print the CPU they used."""
    with Limits(url) as limits:
        limits.create(LIMIT, slots=1)
        held = limits.acquire(LIMIT)

        def wait_slot() -> None:
            limits.acquire(LIMIT, timeout=TIMEOUT).release()

        def all_queued() -> bool:
            return len(limits.inspect(LIMIT).waiters) >= WAITERS

        used, used_long = idle_cpu(wait_slot, all_queued, held.release, (SECONDS, LONG_SECONDS))

    rows = [
        Row(
            f"CPU for {WAITERS} waiters over {SECONDS:g} s",
            used,
            "s",
            "threading.Event waiters",
            base,
            "< 0.05 s",
            used < 0.05,
            digits=4,
        ),
        Row(
            "CPU per waiter-second",
            used / (WAITERS * SECONDS) * 1e6,
            "us",
            "threading.Event waiters",
            base / (WAITERS * SECONDS) * 1e6,
            digits=2,
        ),
        Row(
            f"CPU per {SECONDS:g} s, averaged over {LONG_SECONDS:g} s",
            used_long * SECONDS / LONG_SECONDS,
            "s",
            "threading.Event waiters",
            base,
            "< 0.05 s",
            used_long * SECONDS / LONG_SECONDS < 0.05,
            digits=4,
        ),
    ]
    print_table(
        f"Idle cost{store}: {WAITERS} threads blocked on a held limit (slots=1) for {SECONDS:g} s",
        rows,
        [
            "CPU = user + system time of the whole process (getrusage), measured once "
            "the store shows every waiter queued",
            f"the {LONG_SECONDS:g} s figure spans a safety re-check round (waiters re-check "
            "the store at a slow interval in case a wake-up was lost)",
        ],
        markdown=markdown,
    )


if __name__ == "__main__":
    main()
