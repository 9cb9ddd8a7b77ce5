"""Many releases at once (batched into shared transactions): each gets its own answer."""

from __future__ import annotations

import threading

import pytest

from sluice import Limits
from sluice.errors import LeaseLost

pytestmark = pytest.mark.timeout(60)


def test_a_burst_of_releases_frees_everything_and_reports_only_the_lost_lease(
    limits: Limits,
) -> None:
    limits.create("db", slots=40)
    limits.create("other", slots=1)
    leases = [limits.acquire("db") for _ in range(39)]
    doomed = limits.acquire(["db", "other"])
    assert limits.reset("other") == 1  # revokes the whole lease, on both limits
    everyone = [*leases, doomed]
    start = threading.Barrier(len(everyone))
    outcomes: dict[str, str] = {}

    def release(lease: object) -> None:
        start.wait()
        try:
            lease.release()  # type: ignore[attr-defined]
            outcomes[lease.id] = "released"  # type: ignore[attr-defined]
        except LeaseLost:
            outcomes[lease.id] = "lost"  # type: ignore[attr-defined]

    threads = [threading.Thread(target=release, args=(lease,)) for lease in everyone]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcomes[doomed.id] == "lost"
    assert sorted(outcomes[lease.id] for lease in leases) == ["released"] * 39
    assert limits.inspect("db").in_use == 0
    assert limits.inspect("other").in_use == 0
    # and every one of those units can be taken again, at once
    again = [limits.acquire("db", timeout=0) for _ in range(40)]
    for lease in again:
        lease.release()
