"""Fetch 100 pages of a client's invoices, at most 20 calls at a time.

Each "API call" is simulated by a ~0.2 s sleep. A thread per page asks the limit
``client-invoices`` (20 slots) for a slot, so 100 calls should take about
100 * 0.2 / 20 = 1.0 s. The limit lives in Sluice's default store (an SQLite
file under SLUICE_HOME, ~/.sluice by default; SLUICE_URL picks another), so
every process on this host that uses the same limit shares the same 20 slots.

Run it with ``bash scripts/demo.sh`` or ``python examples/invoices.py``.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from sluice import Limits

LIMIT = "client-invoices"
SLOTS = 20
PAGES = 100
CALL_SECONDS = 0.2
IDEAL_SECONDS = PAGES * CALL_SECONDS / SLOTS  # 1.0 s


class InFlight:
    """Counts the calls running right now and remembers the most ever seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


def get_invoice_page(limits: Limits, page: int, in_flight: InFlight) -> float:
    """Call the (simulated) API for one page; return the seconds spent waiting for a slot."""
    with limits.concurrency(LIMIT) as lease, in_flight:
        time.sleep(CALL_SECONDS + random.uniform(-0.005, 0.005))  # the API call
    return float(lease.waited)


def main() -> None:
    with Limits() as limits:  # SLUICE_URL, else sqlite:///$SLUICE_HOME/sluice.db
        limit = limits.ensure(LIMIT, slots=SLOTS)  # safe on every run: keeps an existing limit
        if limit.slots != SLOTS:
            print(f"note: {LIMIT!r} already exists with slots={limit.slots}; using it as it is")

        in_flight = InFlight()
        t0: list[float] = []
        start = threading.Barrier(PAGES, action=lambda: t0.append(time.perf_counter()))

        def call(page: int) -> float:
            start.wait()  # every call starts at the same instant
            return get_invoice_page(limits, page, in_flight)

        with ThreadPoolExecutor(max_workers=PAGES) as pool:
            waits = list(pool.map(call, range(PAGES)))
        makespan = time.perf_counter() - t0[0]
        store = limits.url

    print(f"store:          {store}")
    print(f"calls:          {PAGES} x {CALL_SECONDS:.1f} s through {LIMIT!r} (slots={limit.slots})")
    print(f"makespan:       {makespan:.3f} s")
    print(f"ideal:          {IDEAL_SECONDS:.3f} s  (= {PAGES} x {CALL_SECONDS} s / {SLOTS})")
    print(f"ratio:          {makespan / IDEAL_SECONDS:.3f}")
    print(f"max concurrent: {in_flight.peak} (limit {limit.slots})")
    print(f"waited:         {sum(waits):.1f} s in all, longest {max(waits):.3f} s")


if __name__ == "__main__":
    main()
