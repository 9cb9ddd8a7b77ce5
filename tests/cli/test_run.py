"""``sluice run ls / show / why`` on a store with recorded flow runs."""

from __future__ import annotations

import pytest

from conformance._helpers import simulate_work
from sluice import Limits, flow, task

from ._run import sluice


@pytest.fixture
def recorded(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A flow run recorded in ``db_url``: two tasks on limit "gate" (1 slot), one fails."""
    monkeypatch.setenv("SLUICE_URL", db_url)
    monkeypatch.setenv("SLUICE_PROGRESS", "0")
    with Limits(db_url) as limits:
        limits.create("gate", slots=1)

    @task(limits=["gate"])
    def step(i: int) -> int:
        simulate_work(0.1)
        if i == 1:
            raise ValueError("bad page")
        return i

    @flow
    def pipeline() -> None:
        for f in step.map([0, 1]):
            f.wait()

    pipeline()
    monkeypatch.delenv("SLUICE_URL")
    return db_url


def test_ls_lists_runs_as_json_and_as_a_table(recorded: str) -> None:
    ran = sluice("run", "ls", "--json", "--url", recorded)
    assert ran.exit_code == 0, ran.stderr
    runs = ran.json()["runs"]  # shaped like `limit ls --json`: {"limits": [...]}
    assert len(runs) == 1
    assert {"id", "flow", "state", "started_at", "ended_at"} <= set(runs[0])
    assert runs[0]["flow"] == "pipeline" and runs[0]["state"] == "Completed"
    table = sluice("run", "ls", "--url", recorded)
    assert runs[0]["id"] in table.stdout and "Completed" in table.stdout


def test_show_gives_each_task_run_its_waited_and_ran_time(recorded: str) -> None:
    run_id = sluice("run", "ls", "--json", "--url", recorded).json()["runs"][0]["id"]
    shown = sluice("run", "show", run_id, "--json", "--url", recorded).json()
    tasks = shown["task_runs"]
    assert sorted(t["state"] for t in tasks) == ["Completed", "Failed"]
    assert all(t["ran"] >= 0.09 for t in tasks)
    assert max(t["waited"] for t in tasks) >= 0.09  # the second waited on the one slot
    table = sluice("run", "show", run_id, "--url", recorded)
    assert table.exit_code == 0 and "ValueError: bad page" in table.stdout


def test_why_names_the_limit(recorded: str) -> None:
    run_id = sluice("run", "ls", "--json", "--url", recorded).json()["runs"][0]["id"]
    ran = sluice("run", "why", run_id, "--url", recorded)
    assert ran.exit_code == 0
    assert "waiting on limit 'gate'" in ran.stdout
    data = sluice("run", "why", run_id, "--json", "--url", recorded).json()
    assert any(c["kind"] == "limit" and c["limit"] == "gate" for c in data["causes"])


def test_an_unknown_run_exits_3_with_one_line(db_url: str) -> None:
    with Limits(db_url) as limits:
        limits.list()  # the store exists, with no runs
    for command in ("show", "why"):
        ran = sluice("run", command, "nope", "--url", db_url)
        assert ran.exit_code == 3
        assert "no flow run with id 'nope'" in ran.error
    assert sluice("run", "ls", "--url", db_url).stdout.strip() == "no flow runs recorded"


def test_ls_finds_the_runs_of_a_flow_that_used_no_limit(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The flow's process creates the store as it records its first run: a store that
    # only has run history is not refused as one that does not exist.
    monkeypatch.setenv("SLUICE_URL", db_url)
    monkeypatch.setenv("SLUICE_PROGRESS", "0")

    @task
    def plain() -> int:
        return 1

    @flow
    def unlimited() -> int:
        return plain.submit().result()

    assert unlimited() == 1
    ran = sluice("run", "ls", "--json", "--url", db_url)
    assert ran.exit_code == 0, ran.stderr
    assert [(r["flow"], r["state"]) for r in ran.json()["runs"]] == [("unlimited", "Completed")]
