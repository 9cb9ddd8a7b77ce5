"""The dashboard's runs list filters (flow, state, time, id prefix) and run pages by id
prefix, over HTTP, on every store."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from starlette.testclient import TestClient

from sluice import Limits
from sluice.store import open_history
from sluice.store.history import FlowRunRecord

HOUR = 3600.0


@pytest.fixture
def recorded(limits: Limits, store_url: str) -> tuple[float, dict[str, str]]:
    """Four ended flow runs in the history, created 3 h, 2 h, 1 h and 1 min ago; and their
    ids by name: ``old`` (alpha, Completed), ``failed`` (beta, Failed), ``twin1`` and
    ``twin2`` (alpha Completed, beta Cancelled; ids sharing their first 7 hex digits)."""
    limits.ensure("made", slots=1)  # the store itself
    now = time.time()
    ids = {
        "old": "0a" * 16,
        "failed": "1b" * 16,
        "twin1": "6970ff6" + "1" * 25,
        "twin2": "6970ff6" + "2" * 25,
    }
    rows = [
        ("old", "alpha", "Completed", now - 3 * HOUR),
        ("failed", "beta", "Failed", now - 2 * HOUR),
        ("twin1", "alpha", "Completed", now - HOUR),
        ("twin2", "beta", "Cancelled", now - 60),
    ]
    open_history(store_url).write(
        [FlowRunRecord(ids[key], flow, state, at, at + 1, at + 2) for key, flow, state, at in rows]
    )
    return now, ids


def _listed(client: TestClient, query: str) -> list[str]:
    response = client.get("/api/runs?" + query)
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["runs"]]


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_runs_list_filters_by_flow_state_time_and_id_prefix(
    client: TestClient, recorded: tuple[float, dict[str, str]]
) -> None:
    now, ids = recorded
    old, failed, twin1, twin2 = ids["old"], ids["failed"], ids["twin1"], ids["twin2"]
    assert _listed(client, "") == [twin2, twin1, failed, old]
    assert _listed(client, "flow=alpha") == [twin1, old]
    assert _listed(client, "state=failed") == [failed]
    assert _listed(client, "state=Failed&state=Cancelled") == [twin2, failed]
    assert _listed(client, "state=Failed,Completed") == [twin1, failed, old]
    assert _listed(client, "since=90m") == [twin2, twin1]
    assert _listed(client, "until=90m") == [failed, old]
    window = f"since={_iso(now - 2.5 * HOUR)}&until={_iso(now - 0.5 * HOUR)}"
    assert _listed(client, window) == [twin1, failed]
    assert _listed(client, "flow=beta&since=150m") == [twin2, failed]
    assert _listed(client, "id=6970FF6") == [twin2, twin1]
    assert _listed(client, "id=6970ff61") == [twin1]
    assert _listed(client, "flow=nope") == []
    assert _listed(client, "flow=alpha&limit=1") == [twin1]
    for bad, says in [
        ("since=yesterday", "since: 'yesterday' is not a time"),
        ("state=Done", "unknown state 'Done'"),
        ("id=xyz", "not hexadecimal"),
    ]:
        response = client.get("/api/runs?" + bad)
        assert response.status_code == 400, bad
        assert says in response.json()["error"]


def test_run_pages_and_the_api_take_a_unique_id_prefix(
    client: TestClient, recorded: tuple[float, dict[str, str]]
) -> None:
    _, ids = recorded
    page = client.get("/runs/" + ids["failed"][:8], follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/runs/" + ids["failed"]
    assert client.get("/api/runs/" + ids["failed"][:8].upper()).json()["id"] == ids["failed"]
    ambiguous = client.get("/api/runs/6970ff6")
    assert ambiguous.status_code == 404
    assert "2 flow runs have ids starting with '6970ff6'" in ambiguous.json()["error"]
    assert {c["id"] for c in ambiguous.json()["candidates"]} == {ids["twin1"], ids["twin2"]}
    twin_page = client.get("/runs/6970ff6")
    assert twin_page.status_code == 404 and "give more of the id" in twin_page.text
    assert client.get("/runs/6970ff62", follow_redirects=False).headers["location"] == (
        "/runs/" + ids["twin2"]
    )
    assert client.get("/runs/6970ff63").status_code == 404
    assert client.get("/runs/697").status_code == 404  # fewer than 4 hex digits: no search
