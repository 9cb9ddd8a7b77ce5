"""Rate-limit accuracy: rate 50/s, burst 5, 8 threads asking as fast as they can for 5 s.

Two figures, each against the configured rate:

* **achieved / configured.** The bucket starts full, so the first ``burst``
  grants come at once and every later grant is due ``1/rate`` after the one
  before. Over the saturated period from the first grant to the last, ``D``
  seconds, exactly ``rate * D`` grants follow the burst; so the achieved rate is
  ``(grants - burst) / D`` and should equal ``rate`` (target >= 0.98x).
* **violations.** For every window ``[t_i, t_j]`` between two grants, the grants
  in it may not exceed ``burst + rate * (t_j - t_i)`` (target: 0 windows over).

Soundness: the time a thread sees ``rate_limit()`` return is *later* than the
store's grant, and a late, bunched reading can look like a violation that did
not happen (or hide one that did). So the violation check uses grant times on
the store's clock: ``limits.acquire()`` on a rate-only limit returns a Lease whose
``acquired_at`` is the store's time of the grant, and the lease is released at
once (releasing gives no tokens back). A second run measures the achieved rate
through ``limits.rate_limit()`` itself, timed on the client.

A second table measures the same on a PostgreSQL store (if a server answers, see
``_postgres.py``), whose grant times are the database clock's.

Run: ``python benchmarks/rate_accuracy.py``
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from _common import Row, parse_args, print_table, temp_sqlite_url
from _postgres import pg_unavailable, pg_version, skip_note, temp_pg_url
from _redis import available, redis_skip_note, redis_version, temp_redis_url
from sluice import Limits

RATE = 50.0
BURST = 5
THREADS = 8
SECONDS = 5.0
TIMEOUT = 10.0
# Lease times are datetimes with microsecond resolution: a window's length may be
# off by ~1 us, i.e. rate * 1e-6 = 5e-5 units; anything above 1e-3 is a real excess.
EPSILON = 1e-3


def hammer(take: Callable[[], float]) -> list[float]:
    """THREADS threads call ``take()`` (returning a grant time) until SECONDS have passed."""
    times: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS + 1)
    deadline = 0.0

    def worker() -> None:
        start.wait()
        try:
            while time.monotonic() < deadline:
                t = take()
                with lock:
                    times.append(t)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(THREADS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + SECONDS
    start.wait()
    for t in threads:
        t.join(SECONDS + 2 * TIMEOUT)
    if errors:
        raise errors[0]
    return sorted(times)


def achieved_rate(times: Sequence[float]) -> float:
    """Grants per second after the initial burst, over the saturated period."""
    duration = times[-1] - times[0]
    return (len(times) - BURST) / duration if duration > 0 else float("nan")


def window_excess(times: Sequence[float]) -> tuple[int, float]:
    """(windows over ``burst + rate * w``, largest excess in units) over all grant pairs."""
    over, worst = 0, float("-inf")
    for i, ti in enumerate(times):
        for j in range(i, len(times)):
            excess = (j - i + 1) - (BURST + RATE * (times[j] - ti))
            worst = max(worst, excess)
            over += excess > EPSILON
    return over, worst


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__ or "", argv)
    with temp_sqlite_url("rate") as (url, _):
        measure(url, "", args.markdown)
    if available():
        with temp_redis_url("rate") as url:
            measure(url, f", Redis {redis_version()} store", args.markdown)
    else:
        redis_skip_note()
    reason = pg_unavailable()
    if reason:
        skip_note(reason)
        return
    with temp_pg_url("rate") as url:
        measure(url, f", PostgreSQL {pg_version()} store", args.markdown)


def measure(url: str, store: str, markdown: bool) -> None:
    """Hammer two rate limits on ``url`` and print the table."""
    with Limits(url) as limits:
        limits.create("rate-leases", rate=RATE, burst=BURST)
        limits.create("rate-calls", rate=RATE, burst=BURST)

        def lease_grant() -> float:
            lease = limits.acquire("rate-leases", timeout=TIMEOUT)
            lease.release()
            return lease.acquired_at.timestamp()  # the store's clock at the grant

        def rate_limit_call() -> float:
            limits.rate_limit("rate-calls", timeout=TIMEOUT)
            return time.monotonic()  # a later bound than the grant: used for the rate only

        grants = hammer(lease_grant)
        calls = hammer(rate_limit_call)

    lease_rate, call_rate = achieved_rate(grants), achieved_rate(calls)
    over, worst = window_excess(grants)
    rows = [
        Row(
            "achieved rate, acquire() leases",
            lease_rate,
            "/s",
            "configured rate",
            RATE,
            ">= 0.98x baseline",
            lease_rate >= 0.98 * RATE,
            digits=2,
        ),
        Row(
            "achieved rate, rate_limit()",
            call_rate,
            "/s",
            "configured rate",
            RATE,
            ">= 0.98x baseline",
            call_rate >= 0.98 * RATE,
            digits=2,
        ),
        Row("windows over burst + rate*w", over, "", target="0", met=over == 0, digits=0),
        Row(
            "largest excess in any window",
            worst,
            "units",
            target="<= 0",
            met=worst <= EPSILON,
            digits=4,
        ),
        Row(
            "grants (leases / rate_limit calls)",
            len(grants),
            "",
            "rate_limit() calls",
            len(calls),
            digits=0,
        ),
    ]
    print_table(
        f"Rate accuracy{store}: rate {RATE:g}/s, burst {BURST}, {THREADS} threads for "
        f"{SECONDS:g} s",
        rows,
        [
            "achieved = (grants - burst) / (last grant - first grant): the bucket starts full",
            f"violation check over all {len(grants) * (len(grants) + 1) // 2} windows between "
            "two grants, on the store's clock (Lease.acquired_at)",
        ],
        markdown=markdown,
    )


if __name__ == "__main__":
    main()
