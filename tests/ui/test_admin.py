"""Admin actions: only with the token, in a header; otherwise 403 and nothing changes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from starlette.testclient import TestClient

from sluice import Limits
from sluice.report.sampler import Sampler
from sluice.ui.app import Dashboard, create_app
from sluice.ui.views import RunIndex

if TYPE_CHECKING:
    from httpx2 import Response  # what the test client returns (starlette >= 1.0)

ACTIONS = [
    ("enable", {}),
    ("disable", {}),
    ("reset", {}),
    ("update", {"slots": 5}),
]


def _state(limits: Limits) -> tuple[object, int]:
    return limits.get("db"), limits.inspect("db").in_use


@pytest.mark.parametrize(("action", "extra"), ACTIONS)
@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},
        {"Content-Type": "application/json", "X-Sluice-Token": "wrong"},
        {"Content-Type": "application/json", "X-Sluice-Token": ""},
        {"Content-Type": "application/json", "Cookie": "X-Sluice-Token=test-token-0123456789"},
    ],
    ids=["no-token", "wrong-token", "empty-token", "token-in-cookie"],
)
def test_without_the_token_every_action_is_403_and_changes_nothing(
    client: TestClient,
    limits: Limits,
    action: str,
    extra: dict[str, object],
    headers: dict[str, str],
) -> None:
    limits.create("db", slots=2)
    limits.disable("db") if action == "enable" else None
    lease = limits.acquire("db") if action != "enable" else None
    before = _state(limits)
    response = client.post(f"/api/admin/{action}", json={"limit": "db", **extra}, headers=headers)
    assert response.status_code == 403
    assert "token" in response.json()["error"]
    assert _state(limits) == before
    if lease is not None:
        lease.release()  # still held: the reset did not happen


def test_a_read_only_dashboard_refuses_even_a_token(store_url: str, limits: Limits) -> None:
    limits.create("db", slots=2)
    dashboard = Dashboard(limits, Sampler(limits, 0.05), RunIndex(store_url), None)
    with TestClient(create_app(dashboard, sample_in_background=False)) as http:
        response = http.post(
            "/api/admin/disable",
            json={"limit": "db"},
            headers={"X-Sluice-Token": "anything", "Content-Type": "application/json"},
        )
        assert response.status_code == 403 and "read-only" in response.json()["error"]
        assert http.get("/api/session").json()["read_only"] is True
    assert limits.get("db").active is True


def test_with_the_token_enable_disable_update_and_reset_work(
    client: TestClient, limits: Limits, admin_headers: dict[str, str]
) -> None:
    limits.create("db", slots=2)

    def post(action: str, **body: object) -> Response:
        return client.post(
            f"/api/admin/{action}", json={"limit": "db", **body}, headers=admin_headers
        )

    response = post("disable")
    assert response.status_code == 200 and response.json()["ok"] is True
    assert "disabled limit 'db'" in response.json()["message"]
    assert limits.get("db").active is False
    assert client.get("/api/limits").json()["limits"][0]["active"] is False  # resampled

    assert post("enable").status_code == 200
    assert limits.get("db").active is True

    response = post("update", slots=7, rate="10/s", burst=3)
    assert response.status_code == 200, response.text
    assert "slots 7, rate 10/s, burst 3" in response.json()["message"]
    changed = limits.get("db")
    assert (changed.slots, changed.rate, changed.burst) == (7, 10.0, 3)
    assert post("update", rate=None).status_code == 200
    assert limits.get("db").rate is None

    lease = limits.acquire("db", occupy=2)
    response = post("reset")
    assert response.json()["message"] == "reset limit 'db': released 1 holder(s)"
    assert limits.inspect("db").in_use == 0
    assert lease.id not in {h.lease_id for h in limits.inspect("db").holders}


@pytest.mark.parametrize(
    ("action", "body", "status", "needle"),
    [
        ("update", {"limit": "db", "slots": 0}, 400, "slots must be an int from 1 to"),
        ("update", {"limit": "db", "slots": 2**63}, 400, "slots must be an int from 1 to"),
        ("update", {"limit": "db", "rate": 1e300}, 400, "rate must be units per second from"),
        ("update", {"limit": "db", "burst": 2**53 + 1}, 400, "burst must be an int from 1 to"),
        ("update", {"limit": "db", "rate": "fast"}, 400, "'fast' is not a rate"),
        ("update", {"limit": "db", "colour": "red"}, 400, "unknown field(s) ['colour']"),
        ("update", {"limit": "db"}, 400, "needs at least one of"),
        ("enable", {"limit": "nope"}, 404, "nope"),
        ("enable", {"name": "db"}, 400, '"limit": NAME'),
        ("explode", {"limit": "db"}, 404, "unknown action 'explode'"),
    ],
)
def test_bad_actions_say_what_is_wrong_and_change_nothing(
    client: TestClient,
    limits: Limits,
    admin_headers: dict[str, str],
    action: str,
    body: dict[str, object],
    status: int,
    needle: str,
) -> None:
    limits.create("db", slots=2)
    before = limits.get("db")
    response = client.post(f"/api/admin/{action}", json=body, headers=admin_headers)
    assert response.status_code == status
    assert needle in response.json()["error"]
    assert limits.get("db") == before


def test_deeply_nested_or_huge_json_is_a_400_and_changes_nothing(
    client: TestClient, limits: Limits, admin_headers: dict[str, str]
) -> None:
    limits.create("db", slots=2)
    before = limits.get("db")
    headers = {**admin_headers, "Content-Type": "application/json"}
    nested = '{"limit": "db", "slots": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = client.post("/api/admin/update", content=nested, headers=headers)
    assert response.status_code == 400
    assert "bytes" in response.json()["error"] or "nested" in response.json()["error"]
    deep = '{"limit": "db", "slots": ' + "[" * 20_000 + "]" * 20_000 + "}"
    response = client.post("/api/admin/update", content=deep, headers=headers)
    assert response.status_code == 400, response.text
    assert limits.get("db") == before


def test_an_action_must_be_sent_as_json(
    client: TestClient, limits: Limits, admin_headers: dict[str, str]
) -> None:
    limits.create("db", slots=2)
    headers = {**admin_headers, "Content-Type": "application/x-www-form-urlencoded"}
    response = client.post("/api/admin/disable", content="limit=db", headers=headers)
    assert response.status_code == 400 and "JSON" in response.json()["error"]
    assert limits.get("db").active is True
    assert client.get("/api/admin/disable").status_code == 405
