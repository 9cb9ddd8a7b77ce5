"""A flow whose process is killed (SIGKILL) mid-run ends Crashed, with its running task
runs, at its time of death: seen by ``sluice run ls/show/why`` on every store processes
share. SQLite sees the death at once (the process's lock file); Redis and PostgreSQL
once ``MISSED_BEATS`` heartbeats were missed (``SLUICE_HISTORY_HEARTBEAT``, short here).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from cli._run import sluice, sluice_process
from conformance._helpers import stays, wait_until
from conformance._procs import SPAWN, child, expect
from sluice import flow, runs, runtime
from sluice.store.history import MISSED_BEATS

from . import _crash_procs

EVERY = 0.2
"""Seconds between heartbeats of the flow's process."""

pytestmark = pytest.mark.timeout(120)


def test_a_killed_flow_and_its_running_task_runs_end_crashed(
    process_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = process_url
    monkeypatch.setenv("SLUICE_HISTORY_HEARTBEAT", str(EVERY))
    results = SPAWN.Queue()
    with child(_crash_procs.run_doomed, url, results) as proc:
        _, flow_run_id, first = expect(results, "running")
        _, _, second = expect(results, "running")

        def both_recorded_running() -> bool:
            detail = runs.get(flow_run_id, url=url)
            states = {t.run.id: t.run.state for t in detail.task_runs}
            return states.get(first) == states.get(second) == "Running"

        wait_until(both_recorded_running, 10, "the stuck task runs recorded Running")
        assert sluice("run", "ls", "--json", "--url", url).json()["runs"][0]["state"] == "Running"
        killed_at = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)

    def listed_crashed() -> dict[str, Any] | None:
        newest = sluice("run", "ls", "--json", "--url", url).json()["runs"][0]
        return newest if newest["state"] == "Crashed" else None

    listed = wait_until(listed_crashed, MISSED_BEATS * EVERY + 10, "run ls to show Crashed")
    seen_at = time.time()
    assert listed["id"] == flow_run_id and listed["ended_at"] is not None

    shown = sluice("run", "show", flow_run_id, "--json", "--url", url).json()
    detail = runs.get(flow_run_id, url=url)
    death = detail.run.ended_at
    assert death is not None
    assert killed_at - EVERY <= death <= seen_at  # within one heartbeat of the kill
    assert shown["state"] == "Crashed" and "pid" in shown["message"]
    by_id = {t["id"]: t for t in shown["task_runs"]}
    for task_run_id in (first, second):
        assert by_id[task_run_id]["state"] == "Crashed"
        assert by_id[task_run_id]["states"][-1]["name"] == "Crashed"
    ended = {t.run.id: t.run.ended_at for t in detail.task_runs}
    assert ended[first] == ended[second] == death
    assert sorted(t["state"] for t in shown["task_runs"]) == ["Completed", "Crashed", "Crashed"]
    text = sluice("run", "show", flow_run_id, "--url", url).stdout
    assert "Crashed" in text

    # run why stops at the time of death: asked again later, it says the same.
    why = sluice("run", "why", flow_run_id, "--json", "--url", url).json()
    assert why["wall_seconds"] <= death - detail.run.created_at + 1e-6
    stays(
        lambda: (
            sluice("run", "why", flow_run_id, "--json", "--url", url).json()["wall_seconds"]
            == why["wall_seconds"]
        ),
        3 * EVERY,
        "run why's wall time",
    )


def test_a_flow_run_is_in_the_store_running_before_its_body_starts(process_url: str) -> None:
    # Read by another process, so nothing of this one (its writer) is flushed for it.
    @flow(name="watched")
    def watched() -> Any:
        run_id = runtime.flow_run.id
        assert run_id is not None
        return sluice_process("run", "show", run_id, "--json", "--url", process_url).json()

    seen = watched()
    assert seen["flow"] == "watched" and seen["state"] == "Running"
    assert seen["ended_at"] is None and seen["pid"] == os.getpid()
