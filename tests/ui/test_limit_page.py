"""A limit's page over HTTP, on every store: what blocks the head of its queue, its wait
percentiles from the store's histogram, and the audit record of admin actions."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from starlette.testclient import TestClient

from conformance._helpers import simulate_work, wait_for_waiters, wait_until
from sluice import Limits
from sluice.errors import LeaseLost
from sluice.report.sampler import Sampler
from sluice.ui.app import Dashboard, create_app
from sluice.ui.views import RunIndex

from .conftest import TOKEN


@contextmanager
def _waiting(limits: Limits, name: str, *occupies: int) -> Iterator[list[threading.Thread]]:
    """Threads that each wait for ``occupy`` units of ``name``, in this order, until the block
    ends (then each gets its units and lets them go)."""
    threads = []
    for i, occupy in enumerate(occupies):
        thread = threading.Thread(
            target=lambda occupy=occupy, i=i: limits.acquire(
                name, occupy=occupy, timeout=30, holder=f"waiter {i}"
            ).release()
        )
        thread.start()
        threads.append(thread)
        wait_for_waiters(limits, name, i + 1)  # queued in this order
    yield threads


def _limit(client: TestClient, name: str) -> dict[str, Any]:
    response = client.get(f"/api/limits/{name}")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def _limit_when(
    client: TestClient, name: str, ready: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """``GET /api/limits/NAME`` once its sample (taken at most every 50 ms) passes ``ready``."""

    def probe() -> dict[str, Any] | None:
        data = _limit(client, name)
        return data if ready(data) else None

    return wait_until(probe, what=what)


def test_head_of_line_says_how_many_units_are_free_and_how_many_the_head_needs(
    client: TestClient, limits: Limits
) -> None:
    limits.create("db", slots=3)
    assert _limit(client, "db")["head"] == {
        "kind": "none",
        "free": 3,
        "head_needs": None,
        "behind": 0,
        "text": "nobody waits",
    }
    held = limits.acquire("db", occupy=2, holder="big")
    threads: list[threading.Thread] = []
    try:
        with _waiting(limits, "db", 2, 1) as threads:
            head = _limit_when(client, "db", lambda d: len(d["waiters"]) == 2, "2 waiters")["head"]
    finally:
        held.release()
        for thread in threads:
            thread.join(10)
    assert (head["kind"], head["free"], head["head_needs"], head["behind"]) == ("blocked", 1, 2, 1)
    assert head["text"].startswith("1 unit free; the waiter at the head needs 2")
    assert "head-of-line blocking" in head["text"]
    assert "1 more wait behind it" in head["text"]


def test_head_of_line_says_when_no_unit_is_free_and_when_the_limit_is_disabled(
    client: TestClient, limits: Limits
) -> None:
    limits.create("db", slots=1)
    held = limits.acquire("db", holder="first")
    threads: list[threading.Thread] = []
    try:
        with _waiting(limits, "db", 1) as threads:
            head = _limit_when(client, "db", lambda d: bool(d["waiters"]), "a waiter")["head"]
    finally:
        held.release()
        for thread in threads:
            thread.join(10)
    assert (head["kind"], head["free"], head["head_needs"], head["behind"]) == ("full", 0, 1, 0)
    assert head["text"] == "no unit free (1 of 1 in use)"
    limits.disable("db")
    _limit_when(client, "db", lambda d: d["head"]["kind"] == "disabled", "disabled")


def test_wait_percentiles_come_from_the_stores_histogram_and_survive_a_restart(
    client: TestClient, store_url: str, limits: Limits
) -> None:
    limits.create("db", slots=1)
    assert _limit(client, "db")["wait_percentiles"] == []  # no grants yet
    for _ in range(19):
        limits.acquire("db").release()  # granted at once: the first bucket (<= 1 ms)
    held = limits.acquire("db", holder="slow")
    with _waiting(limits, "db", 1) as threads:
        simulate_work(0.2)  # the 21st grant waits over 100 ms
        held.release()
        threads[0].join(10)
    expected = [
        {"percentile": 50, "above": 0.0, "upto": 0.001},
        {"percentile": 95, "above": 0.0, "upto": 0.001},
        {"percentile": 99, "above": 0.1, "upto": 0.5},
    ]
    data = _limit_when(client, "db", lambda d: d["totals"]["grants"] == 21, "21 grants")
    assert data["wait_percentiles"] == expected
    # A new dashboard (a restarted `sluice ui`) reads the same from the store.
    with Limits(store_url) as again:
        fresh = Dashboard(again, Sampler(again, interval=0.05), RunIndex(store_url), None)
        with TestClient(create_app(fresh, sample_in_background=False)) as restarted:
            assert _limit(restarted, "db")["wait_percentiles"] == expected


def test_admin_actions_are_on_the_limit_page_newest_first_naming_the_token_holder(
    client: TestClient, limits: Limits, admin_headers: dict[str, str]
) -> None:
    limits.create("db", slots=2)
    assert _limit(client, "db")["audit"] == []  # read once: what is cached must not hide a change
    fingerprint = hashlib.sha256(TOKEN.encode()).hexdigest()[:8]
    for action, extra in [("update", {"slots": 3}), ("disable", {}), ("enable", {})]:
        response = client.post(
            f"/api/admin/{action}", json={"limit": "db", **extra}, headers=admin_headers
        )
        assert response.status_code == 200, response.text
        newest = _limit(client, "db")["audit"][0]
        assert newest["action"] == action, newest
        assert newest["who"]["user"] == f"token holder {fingerprint}"
        assert newest["who"]["program"] == "sluice ui"
        assert newest["who"]["address"].startswith("testclient:")
    lease = limits.acquire("db")
    client.post("/api/admin/reset", json={"limit": "db"}, headers=admin_headers)
    with pytest.raises(LeaseLost):
        lease.release()
    limits.update("db", slots=4)  # the Python API: recorded as this process
    data = _limit_when(client, "db", lambda d: d["slots"] == 4, "slots 4")
    actions = [r["action"] for r in data["audit"]]
    assert actions == ["update", "reset", "enable", "disable", "update"]
    assert data["audit"][0]["who"]["address"] is None
    assert data["audit"][0]["what"] == "slots 3 -> 4"
    assert data["audit"][-1]["what"] == "slots 2 -> 3"
    assert data["audit"][1]["what"] == "revoked 1 lease"
    # The chart's slots line follows the changes: 2, then 3, then 4.
    assert [slots for _, slots in data["timeline"]["slots"]] == [2, 3, 4]
    refused = client.post("/api/admin/disable", json={"limit": "db"})
    assert refused.status_code == 403
    assert _limit(client, "db")["audit"][0]["action"] == "update"  # a refused action: no record
