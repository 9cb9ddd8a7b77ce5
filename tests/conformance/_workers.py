"""Functions run in child processes (multiprocessing 'spawn': they must be importable).

Each reports to the parent through a multiprocessing queue as plain tuples;
times are ``time.monotonic()``, which is system-wide on Linux, so parent and
children can compare them.
"""

from __future__ import annotations

import os
import random
import threading
import time
import traceback
from typing import Any

from sluice import Limits
from sluice.errors import LeaseLost

from ._helpers import Holdings, simulate_work


def acquire_and_report(
    url: str,
    names: list[str],
    occupy: int,
    timeout: float,
    holder: str,
    results: Any,
    hold_seconds: float = 0.0,
) -> None:
    """Acquire, report ('granted', holder, pid, t, waited), hold a while, release."""
    limits = Limits(url)
    try:
        lease = limits.acquire(names, occupy, timeout, holder=holder)
        granted = time.monotonic()
        results.put(("granted", holder, os.getpid(), granted, lease.waited))
        if hold_seconds:
            simulate_work(hold_seconds)
        lease.release()
        results.put(("released", holder, os.getpid(), time.monotonic()))
    except BaseException as exc:
        results.put(("error", holder, os.getpid(), repr(exc)))
    finally:
        limits.close()


def hold_forever(url: str, names: list[str], occupy: int, results: Any) -> None:
    """Acquire, report ('held', pid, lease_id), then hang until killed."""
    limits = Limits(url)
    try:
        lease = limits.acquire(names, occupy, 30, holder=f"doomed-{os.getpid()}")
        results.put(("held", os.getpid(), lease.id))
    except BaseException as exc:
        results.put(("error", os.getpid(), repr(exc)))
        raise
    threading.Event().wait()  # hang until killed


def hold_until_told(
    url: str, names: list[str], occupy: int, results: Any, go: Any, holder: str = "sleeper"
) -> None:
    """Hold ``names`` in a with block until ``go`` is set; report how leaving it went:
    ("lease-lost", lease.lost, lease id, names, second release), ("no-error", lease.lost,
    second release) or ("error", repr, second release)."""
    limits = Limits(url)
    lease = None
    try:
        with limits.concurrency(names, occupy, timeout=30, holder=holder) as lease:
            results.put(("held", os.getpid(), lease.id))
            go.wait(60)
    except LeaseLost as exc:
        assert lease is not None
        outcome: tuple[Any, ...] = ("lease-lost", lease.lost, exc.lease_id, list(exc.names))
    except BaseException as exc:
        outcome = ("error", repr(exc))
    else:
        assert lease is not None
        outcome = ("no-error", lease.lost)
    try:
        if lease is not None:
            lease.release()  # already reported: must not raise again
        second = "ok"
    except BaseException as exc:
        second = repr(exc)
    results.put((*outcome, second))
    limits.close()


def hammer(
    url: str,
    proc_index: int,
    threads: int,
    rounds: int,
    slots: dict[str, int],
    barrier: Any,
    results: Any,
) -> None:
    """Many threads take random limits with random occupy; report what each held and when.

    Reports (process index, rounds done, Holdings.records(), errors); each hold is
    recorded after the grant returned and before release is called, so it lies
    inside the real holding interval.
    """
    limits = Limits(url)
    holdings = Holdings()
    errors: list[str] = []
    completed = [0]
    lock = threading.Lock()
    names_all = sorted(slots)

    def run(thread_index: int) -> None:
        rng = random.Random(proc_index * 1000 + thread_index)
        done = 0
        try:
            barrier.wait(60)
            for i in range(rounds):
                names = rng.sample(names_all, rng.randint(1, len(names_all)))
                occupy = rng.randint(1, min(slots[n] for n in names))
                hold = rng.uniform(0, 0.002)
                if i % 2:
                    with (
                        limits.concurrency(names, occupy, timeout=60) as lease,
                        holdings.holding(names, occupy),
                    ):
                        simulate_work(hold)
                else:
                    lease = limits.acquire(names, occupy, timeout=60)
                    with holdings.holding(lease.names, occupy):
                        simulate_work(hold)
                    lease.release()
                if sorted(lease.names) != sorted(names):
                    raise AssertionError(f"asked for {names}, lease names {lease.names}")
                done += 1
        except BaseException:
            with lock:
                errors.append(traceback.format_exc())
        with lock:
            completed[0] += done

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    limits.close()
    results.put((proc_index, completed[0], holdings.records(), errors))
