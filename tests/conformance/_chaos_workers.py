"""The worker process of the multi-process chaos test (``test_chaos_processes.py``).

Each worker runs a few threads that take "a", "b" or both, over and over, until a
stop file appears, and writes what happened to its own append-only events file,
one JSON object a line, each with one ``os.write`` (so a SIGKILL leaves every
line but perhaps a torn last one, which the reader drops). Times are
``time.monotonic()``, system-wide on Linux, so the parent can compare them with
its own record of kills, pauses and store restarts.

Events (``e``):

- ``start``: the process is up (``pid``);
- ``enter``: a lease was granted: ``lease``, ``fence``, ``names``, ``occupy``,
  ``call`` (when acquire was called) and ``t`` (after it returned);
- ``told``: the lease's ``on_lost`` callback ran (``t``): its holder is told;
- ``exit``: the holder leaves its hold (``t``), before release is called;
- ``released``: how the release went: ``how`` is ``ok``, ``lost`` (LeaseLost) or
  ``store-error`` (StoreError: the store was unreachable);
- ``timeout``, ``store-error``: an acquisition that ran out of time, or failed on
  an unreachable store (expected during store restarts);
- ``error``: anything else (a test failure);
- ``done``: the process stopped on request, having closed its ``Limits``.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import traceback
from typing import Any

from sluice import Lease, Limits
from sluice.errors import AcquireTimeout, LeaseLost, StoreError

from ._helpers import simulate_work

CHOICES: tuple[tuple[str, ...], ...] = (("a",), ("b",), ("a", "b"))
"""Single and multi-limit acquisitions."""
ACQUIRE_TIMEOUT = 8.0
"""Long enough to outwait a paused holder's lease TTL, short enough to keep threads cycling."""


class Events:
    """A per-process append-only events file; each event one line, one write."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, event: str, **fields: Any) -> None:
        fields.setdefault("t", time.monotonic())
        line = json.dumps({"e": event, **fields}) + "\n"
        os.write(self.fd, line.encode())


def chaos_worker(
    url: str, events_path: str, stop_path: str, threads: int, seed: int, deadline: float
) -> None:
    """Hammer "a" and "b" from ``threads`` threads until ``stop_path`` exists (or
    ``deadline``, on ``time.monotonic()``, passes: a parent gone for good)."""
    events = Events(events_path)
    events.write("start", pid=os.getpid())
    limits = Limits(url)

    def stopping() -> bool:
        return os.path.exists(stop_path) or time.monotonic() > deadline

    def hold(lease: Lease, names: tuple[str, ...], occupy: int, called: float) -> None:
        lease_id = lease.id
        fence = lease.fence
        events.write(
            "enter", lease=lease_id, fence=fence, names=list(names), occupy=occupy, call=called
        )
        lease.on_lost(lambda _error: events.write("told", lease=lease_id))

    def run(index: int) -> None:
        rng = random.Random(seed * 100 + index)
        while not stopping():
            names = rng.choice(CHOICES)
            occupy = 1 if "a" in names else rng.randint(1, 2)
            work = rng.uniform(0.005, 0.05)
            called = time.monotonic()
            lease: Lease | None = None
            try:
                if rng.random() < 0.5:
                    with limits.concurrency(list(names), occupy, timeout=ACQUIRE_TIMEOUT) as lease:
                        hold(lease, names, occupy, called)
                        simulate_work(work)
                        events.write("exit", lease=lease.id)
                    events.write("released", lease=lease.id, how="ok")
                else:
                    lease = limits.acquire(list(names), occupy, timeout=ACQUIRE_TIMEOUT)
                    hold(lease, names, occupy, called)
                    simulate_work(work)
                    events.write("exit", lease=lease.id)
                    lease.release()
                    events.write("released", lease=lease.id, how="ok")
            except AcquireTimeout:
                events.write("timeout", names=list(names))
            except LeaseLost as exc:
                events.write("released", lease=exc.lease_id, how="lost")
            except StoreError as exc:
                if lease is None:
                    events.write("store-error", error=repr(exc))
                else:
                    events.write("released", lease=lease.id, how="store-error", error=repr(exc))
                simulate_work(0.1)  # paces retries while the store is down
            except BaseException:
                events.write("error", error=traceback.format_exc())
                simulate_work(0.1)

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    try:
        limits.close()
    except BaseException:
        events.write("error", error=traceback.format_exc())
    events.write("done")
