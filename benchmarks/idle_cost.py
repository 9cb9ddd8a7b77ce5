"""Idle cost: CPU used by 200 threads blocked on a held limit for 5 s.

The main thread holds the only slot of a limit; 200 threads block in
``limits.acquire``. Once the store shows all 200 queued, the process's CPU time
(user + system, every thread, ``resource.getrusage``) is read before and after
5 s of waiting. Waiters that sleep until woken use none; a polling loop shows up
here. Target: < 0.05 CPU seconds.

Baseline, same run: 200 threads blocked on one ``threading.Event`` for 5 s.

Run: ``python benchmarks/idle_cost.py``
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable, Sequence

from _common import Row, parse_args, print_table, temp_sqlite_url
from sluice import Limits

LIMIT = "idle"
WAITERS = 200
SECONDS = 5.0
TIMEOUT = 120.0


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def idle_cpu(block: Callable[[], None], ready: Callable[[], bool], wake: Callable[[], object],
             ) -> float:
    """Start WAITERS threads running ``block``; once ``ready()``, measure SECONDS of CPU."""
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
    before = cpu_seconds()
    time.sleep(SECONDS)
    used = cpu_seconds() - before
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

    base = idle_cpu(wait_event, lambda: blocked[0] >= WAITERS, event.set)

    with temp_sqlite_url("idle") as (url, _), Limits(url) as limits:
        limits.create(LIMIT, slots=1)
        held = limits.acquire(LIMIT)

        def wait_slot() -> None:
            limits.acquire(LIMIT, timeout=TIMEOUT).release()

        def all_queued() -> bool:
            return len(limits.inspect(LIMIT).waiters) >= WAITERS

        used = idle_cpu(wait_slot, all_queued, held.release)

    rows = [
        Row(f"CPU for {WAITERS} waiters over {SECONDS:g} s", used, "s",
            "threading.Event waiters", base, "< 0.05 s", used < 0.05, digits=4),
        Row("CPU per waiter-second", used / (WAITERS * SECONDS) * 1e6, "us",
            "threading.Event waiters", base / (WAITERS * SECONDS) * 1e6, digits=2),
    ]
    print_table(
        f"Idle cost: {WAITERS} threads blocked on a held limit (slots=1) for {SECONDS:g} s",
        rows,
        ["CPU = user + system time of the whole process (getrusage), measured once "
         "the store shows every waiter queued"],
        markdown=args.markdown,
    )


if __name__ == "__main__":
    main()
