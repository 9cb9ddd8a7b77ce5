"""Fetch 100 pages of a client's invoices through a flow, at most 20 calls at a time.

The "API" is simulated: each page takes about 0.2 s (with latency jitter) and
about one call in 20 fails with a transient error that a retry fixes. Every
page is a task run on the limit ``client-invoices`` (20 slots), declared with
``Limits().ensure(...)``, so 100 calls take about 100 * 0.2 / 20 = 1.0 s plus
the retries. The limit and the run history live in Sluice's default store (an
SQLite file under SLUICE_HOME, ~/.sluice by default; SLUICE_URL picks another),
so every process on this host shares the same 20 slots.

The run ends by printing ``sluice run why`` for itself: where the flow's time
went, by cause. Run it with ``bash scripts/demo.sh`` or ``python examples/invoices.py``.
"""

from __future__ import annotations

import random
import threading
import time

import sluice.runs
import sluice.runtime
from sluice import Limits, flow, task, wait
from sluice.runners import ThreadPoolTaskRunner

LIMIT = "client-invoices"
SLOTS = 20
PAGES = 100
CALL_SECONDS = 0.2
IDEAL_SECONDS = PAGES * CALL_SECONDS / SLOTS  # 1.0 s, without retries

_failed_once: set[int] = set()
_lock = threading.Lock()


def fetch_page(page: int) -> list[dict]:
    """The simulated paged API: ~0.2 s with jitter; 1 page in 20 fails on its first try."""
    time.sleep(CALL_SECONDS + random.uniform(-0.02, 0.02))
    with _lock:
        flaky = page % 20 == 7 and page not in _failed_once
        _failed_once.add(page)
    if flaky:
        raise ConnectionError(f"page {page}: 503 Service Unavailable")
    return [{"page": page, "invoice": f"INV-{page:03d}-{i}"} for i in range(3)]


@task(limits=["client-invoices"], retries=2, retry_delay_seconds=1)
def get_client_invoice_page(page: int) -> list[dict]:
    return fetch_page(page)


@flow(task_runner=ThreadPoolTaskRunner(max_workers=50))
def client_invoices(pages: int) -> list[dict]:
    futures = [get_client_invoice_page.submit(p) for p in range(pages)]
    wait(futures)
    return [row for f in futures for row in f.result()]


def main() -> None:
    with Limits() as limits:  # SLUICE_URL, else sqlite:///$SLUICE_HOME/sluice.db
        limit = limits.ensure(LIMIT, slots=SLOTS)  # safe on every run: keeps an existing limit
        store = limits.url
    if limit.slots != SLOTS:
        print(f"note: {LIMIT!r} already exists with slots={limit.slots}; using it as it is")

    started = time.perf_counter()
    rows = client_invoices(PAGES)
    makespan = time.perf_counter() - started
    run = sluice.runs.list(limit=1)[0]

    print(f"store:     {store}")
    print(f"flow run:  {run.id} ({run.flow}): {run.state}")
    print(f"pages:     {PAGES} x ~{CALL_SECONDS:.1f} s through {LIMIT!r} (slots={limit.slots})")
    print(f"rows:      {len(rows)}")
    print(f"makespan:  {makespan:.3f} s (ideal without retries: {IDEAL_SECONDS:.3f} s)")
    print()
    print(f"$ sluice run why {run.id}")
    print(sluice.runs.why(run.id))


if __name__ == "__main__":
    main()
