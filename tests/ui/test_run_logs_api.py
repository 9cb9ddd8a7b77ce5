"""``GET /api/runs/ID/logs``: what the dashboard's run page shows of a run's logs and
its flow run's traceback (every store)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from sluice import Limits, flow, get_run_logger, runs, task


@task
def fetch() -> None:
    get_run_logger().info("fetched a page")
    raise RuntimeError("the page is gone")


@flow(name="crawler")
def crawler() -> None:
    fetch.submit().result()


def test_api_run_logs_gives_the_records_and_the_traceback(
    client: TestClient, limits: Limits
) -> None:
    with pytest.raises(RuntimeError, match="the page is gone"):
        crawler()
    run_id = runs.list(1)[0].id
    data = client.get(f"/api/runs/{run_id[:8]}/logs").json()  # an id prefix works too
    assert data["id"] == run_id
    assert "RuntimeError: the page is gone" in data["traceback"]
    fetched = next(r for r in data["logs"] if r["message"] == "fetched a page")
    assert fetched["task"] == "fetch" and fetched["level"] == "INFO"
    assert any(r["level"] == "ERROR" and "Traceback" in r["message"] for r in data["logs"])
    missing = client.get(f"/api/runs/{'0' * 32}/logs")
    assert missing.status_code == 404 and "error" in missing.json()


def test_the_run_page_finds_each_failed_task_runs_traceback_in_api_runs(
    client: TestClient, limits: Limits
) -> None:
    # The run page shows the flow run's traceback from /logs and each task run's from
    # GET /api/runs/ID; records of several lines (a failure's) keep their lines.
    with pytest.raises(RuntimeError, match="the page is gone"):
        crawler()
    run_id = runs.list(1)[0].id
    (task_run,) = client.get(f"/api/runs/{run_id}").json()["task_runs"]
    assert task_run["state"] == "Failed"
    assert task_run["traceback"].startswith("Traceback (most recent call last):")
    assert task_run["traceback"].rstrip().endswith("RuntimeError: the page is gone")
    logs = client.get(f"/api/runs/{run_id}/logs").json()["logs"]
    failure = next(r for r in logs if r["level"] == "ERROR" and r["task"] == "fetch")
    assert failure["task_run_id"] == task_run["id"]
    assert failure["message"].splitlines()[-1] == "RuntimeError: the page is gone"
    assert [r["seq"] for r in logs] == sorted(r["seq"] for r in logs)
