"""Every page and JSON endpoint of the dashboard, over HTTP."""

from __future__ import annotations

import re
import threading

import pytest
from starlette.testclient import TestClient

import sluice.runs
from sluice import Limits

from . import _flows


def _run_flow(limits: Limits) -> str:
    limits.create(_flows.LIMIT, slots=1)
    _flows.pipeline()
    return sluice.runs.list(1)[0].id


def test_pages_are_html_shells_with_their_page_and_security_headers(
    client: TestClient, limits: Limits
) -> None:
    limits.create("db", slots=2)
    for path, page in [("/", "limits"), ("/limits/db", "limit"), ("/runs", "runs")]:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        assert f'data-page="{page}"' in response.text
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["referrer-policy"] == "no-referrer"
        assert '<html lang="en">' in response.text
        assert 'name="viewport"' in response.text
    assert 'data-name="db"' in client.get("/limits/db").text


def test_pages_load_only_local_assets(client: TestClient) -> None:
    page = client.get("/").text
    assert "http://" not in page and "https://" not in page
    for asset, kind in [("/static/app.js", "javascript"), ("/static/app.css", "text/css")]:
        response = client.get(asset)
        assert response.status_code == 200
        assert kind in response.headers["content-type"]
        urls = set(re.findall(r"https?://[^\s\"')]+", response.text))
        assert urls <= {"http://www.w3.org/2000/svg"}  # a namespace name, never fetched


def test_unknown_limit_and_run_pages_are_404(client: TestClient) -> None:
    missing = client.get("/limits/nope")
    assert missing.status_code == 404
    assert "No limit named &#x27;nope&#x27;" in missing.text
    assert client.get("/runs/0123").status_code == 404
    assert client.get("/task-runs/" + "a" * 32).status_code == 404


def test_limit_names_with_slashes_and_markup_are_escaped(
    client: TestClient, limits: Limits
) -> None:
    limits.create("team/a:b", slots=1)
    page = client.get("/limits/team/a:b")
    assert page.status_code == 200
    assert 'data-name="team/a:b"' in page.text
    assert client.get("/api/limits/team/a:b").json()["name"] == "team/a:b"


def test_api_limits_lists_every_limit_with_usage_rate_and_waiters(
    client: TestClient, limits: Limits
) -> None:
    limits.create("db", slots=2)
    limits.create("api", rate=5, burst=2)
    limits.disable("api")
    with limits.concurrency("db", occupy=2):
        data = client.get("/api/limits").json()
    assert data["error"] is None
    by_name = {row["name"]: row for row in data["limits"]}
    assert by_name["db"]["in_use"] == 2 and by_name["db"]["slots"] == 2
    assert by_name["db"]["holders"] == 1 and by_name["db"]["waiters"] == 0
    assert by_name["api"]["rate"] == 5.0 and by_name["api"]["burst"] == 2
    assert by_name["api"]["active"] is False
    assert by_name["api"]["next_token_in"] == 0.0
    assert by_name["db"]["grants"] == 1 and by_name["api"]["grants"] == 0
    assert by_name["db"]["delivered_rate"] is None  # one sample: no rate measured yet
    assert data["interval"] == 0.05


def test_api_limit_shows_holders_waiters_and_the_trend(client: TestClient, limits: Limits) -> None:
    limits.create("db", slots=1)
    lease = limits.acquire("db", holder="task fetch run " + "b" * 32)
    waiting = threading.Thread(
        target=lambda: limits.acquire("db", timeout=5, holder="second").release()
    )
    waiting.start()
    try:
        for _ in range(100):
            data = client.get("/api/limits/db").json()
            if data["waiters"]:
                break
        else:
            pytest.fail("the waiter never showed up")
    finally:
        lease.release()
        waiting.join()
    (holder,) = data["holders"]
    assert holder["lease_id"] == lease.id and holder["occupy"] == 1
    assert holder["task_run_id"] == "b" * 32
    assert holder["held_for"] >= 0 and 0 < holder["expires_in"] <= 30
    (waiter,) = data["waiters"]
    assert waiter["position"] == 1 and waiter["holder"] == "second"
    assert waiter["task_run_id"] is None
    totals = data["totals"]
    assert (totals["grants"], totals["granted_units"], totals["timeouts"]) == (1, 1, 0)
    assert totals["expired_leases_reclaimed"] == 0
    assert totals["wait_buckets"][0] == {"le": 0.001, "count": 1}
    assert totals["wait_buckets"][-1] == {"le": None, "count": 0}
    assert "delivered_rate" in data
    assert data["history"] and data["history"][-1]["in_use"] == 1
    assert data["history"][-1]["waiting"] == 1
    assert client.get("/api/limits/nope").status_code == 404


def test_api_session_says_whether_the_token_is_right(client: TestClient) -> None:
    assert client.get("/api/session").json()["admin"] is False
    assert client.get("/api/session", headers={"X-Sluice-Token": "wrong"}).json()["admin"] is False
    data = client.get("/api/session", headers={"X-Sluice-Token": "test-token-0123456789"}).json()
    assert data["admin"] is True and data["read_only"] is False


def test_runs_pages_and_api_show_task_runs_gantt_bars_and_why(
    client: TestClient, limits: Limits
) -> None:
    run_id = _run_flow(limits)
    listed = client.get("/api/runs").json()["runs"]
    assert [r["id"] for r in listed] == [run_id]
    assert listed[0]["task_runs"] == _flows.TASK_RUNS
    assert listed[0]["task_wait_seconds"] > 0  # four task runs queued on the one slot
    assert client.get("/api/runs?limit=0").status_code == 400
    assert client.get("/api/runs?limit=x").status_code == 400

    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200 and f'data-run="{run_id}"' in page.text
    data = client.get(f"/api/runs/{run_id}").json()
    assert data["id"] == run_id and len(data["task_runs"]) == _flows.TASK_RUNS
    kinds = {s["kind"] for t in data["task_runs"] for s in t["segments"]}
    assert {"limit", "running", "failed", "retry"} <= kinds
    for t in data["task_runs"]:
        ends = [s["end"] for s in t["segments"]]
        assert all(s["start"] <= s["end"] <= data["span"] + 1e-6 for s in t["segments"])
        assert ends == sorted(ends)
    waits = [s for t in data["task_runs"] for s in t["segments"] if s["kind"] == "limit"]
    assert all(s["limit"] == _flows.LIMIT and s["position"] >= 1 for s in waits)
    failed = [t for t in data["task_runs"] if t["state"] == "Failed"]
    assert len(failed) == 1 and failed[0]["segments"][-1]["kind"] == "failed"
    assert data["why_text"] == str(sluice.runs.why(run_id))
    assert any(c["kind"] == "limit" and c["limit"] == _flows.LIMIT for c in data["why"]["causes"])
    assert client.get("/api/runs/nope").status_code == 404


def test_a_holders_task_run_links_to_its_flow_run(client: TestClient, limits: Limits) -> None:
    run_id = _run_flow(limits)
    task_run = sluice.runs.get(run_id).task_runs[0].run.id
    response = client.get(f"/task-runs/{task_run}", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/runs/{run_id}#task-{task_run}"
