"""The run-history contract, for every backend in tests/history/conftest.py:HISTORY_STORES."""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest

from sluice.errors import InvalidRequest, RunNotFound, SluiceError
from sluice.store import open_history
from sluice.store.history import (
    FlowRunRecord,
    HistoryStore,
    RunLogRecord,
    StateRecord,
    TaskRunRecord,
)


def _flow(
    run_id: str, created: float, *, ended: float | None = 1.0, state: str = "Completed"
) -> FlowRunRecord:
    return FlowRunRecord(
        id=run_id,
        flow="f",
        state=state,
        created_at=created,
        started_at=created,
        ended_at=None if ended is None else created + ended,
        host="h",
        pid=7,
    )


def test_written_runs_and_states_read_back(history: HistoryStore) -> None:
    now = time.time()
    flow = _flow("flow-1", now, ended=None, state="Running")
    task = TaskRunRecord(
        id="task-1",
        flow_run_id="flow-1",
        task="t",
        state="Completed",
        created_at=now,
        started_at=now + 0.5,
        ended_at=now + 1.0,
        message="done",
        limits=("db", "api"),
        occupy=2,
        attempts=1,
        tags=("x",),
    )
    states = [
        StateRecord("task-1", "flow-1", 0, "Pending", now),
        StateRecord("task-1", "flow-1", 1, "Waiting", now + 0.1, "queued", "db", 3),
        StateRecord("task-1", "flow-1", 2, "Running", now + 0.5),
        StateRecord("task-1", "flow-1", 3, "Completed", now + 1.0, "done"),
        StateRecord("flow-1", "flow-1", 0, "Running", now),
    ]
    history.write([flow, task, *states])

    detail = history.get_flow_run("flow-1")
    assert detail.run == flow
    assert detail.states == (states[4],)
    assert len(detail.task_runs) == 1
    assert detail.task_runs[0].run == task
    assert detail.task_runs[0].states == tuple(states[:4])
    assert detail.task_runs[0].states[1].limit == "db"
    assert detail.task_runs[0].states[1].position == 3


def test_writes_are_idempotent_and_the_last_record_of_a_run_wins(history: HistoryStore) -> None:
    now = time.time()
    running = _flow("flow-1", now, ended=None, state="Running")
    done = _flow("flow-1", now, ended=2.0)
    state = StateRecord("flow-1", "flow-1", 0, "Running", now)
    history.write([running, state])
    history.write([running, state])  # a resent batch changes nothing
    history.write([done, StateRecord("flow-1", "flow-1", 0, "Other", now + 5)])  # seq taken
    history.write([])
    detail = history.get_flow_run("flow-1")
    assert detail.run == done
    assert detail.states == (state,)
    history.write([running, done])  # in one batch, the last one wins too
    assert history.get_flow_run("flow-1").run == done


def test_states_may_arrive_before_their_run(history: HistoryStore) -> None:
    now = time.time()
    history.write([StateRecord("flow-1", "flow-1", 0, "Running", now)])
    with pytest.raises(RunNotFound):
        history.get_flow_run("flow-1")
    history.write([_flow("flow-1", now)])
    assert [s.name for s in history.get_flow_run("flow-1").states] == ["Running"]


def test_list_returns_the_newest_runs_first(history: HistoryStore) -> None:
    now = time.time()
    history.write([_flow(f"flow-{i}", now + i) for i in range(5)])
    assert [r.id for r in history.list_flow_runs(3)] == ["flow-4", "flow-3", "flow-2"]
    assert len(history.list_flow_runs(20)) == 5
    with pytest.raises(InvalidRequest, match="limit"):
        history.list_flow_runs(0)


def test_an_unknown_run_raises_run_not_found_naming_it(history: HistoryStore) -> None:
    with pytest.raises(RunNotFound, match="no-such-run") as info:
        history.get_flow_run("no-such-run")
    assert isinstance(info.value, SluiceError)
    assert isinstance(info.value, LookupError)
    assert info.value.run_id == "no-such-run"


def test_prune_keeps_the_newest_runs_and_every_unfinished_one(history: HistoryStore) -> None:
    now = time.time()
    records: list[FlowRunRecord | TaskRunRecord | StateRecord] = []
    for i in range(6):
        run_id = f"flow-{i}"
        records.append(_flow(run_id, now + i, ended=None if i == 0 else 1.0))
        records.append(TaskRunRecord(f"task-{i}", run_id, "t", "Completed", now + i))
        records.append(StateRecord(f"task-{i}", run_id, 0, "Completed", now + i))
    history.write(records)
    assert history.prune(keep_runs=2) == 3  # flow-1..3 go; flow-0 has not ended
    assert {r.id for r in history.list_flow_runs(20)} == {"flow-0", "flow-4", "flow-5"}
    with pytest.raises(RunNotFound):
        history.get_flow_run("flow-2")
    assert history.get_flow_run("flow-5").task_runs[0].states[0].name == "Completed"
    assert history.prune(keep_runs=10) == 0


def test_prune_by_age(history: HistoryStore) -> None:
    now = time.time()
    history.write([_flow("old", now - 3600), _flow("new", now)])
    assert history.prune(keep_runs=100, max_age_seconds=60) == 1
    assert [r.id for r in history.list_flow_runs(20)] == ["new"]
    with pytest.raises(InvalidRequest):
        history.prune(keep_runs=-1)


def test_one_store_per_url_in_a_process(history_url: str, history: HistoryStore) -> None:
    assert open_history(history_url) is history


def test_log_records_read_back_in_order_once_each(history: HistoryStore) -> None:
    now = time.time()
    history.write([_flow("flow-1", now, ended=None, state="Running")])
    logs = [
        RunLogRecord("flow-1", 2, "task-1", now + 2, logging.ERROR, "sluice.flows", "boom\nline 2"),
        RunLogRecord("flow-1", 0, "flow-1", now, logging.INFO, "sluice.runs", "start"),
        RunLogRecord("flow-1", 1, "task-1", now + 1, logging.WARNING, "sluice.runs", "héllo"),
    ]
    history.write(logs)
    history.write([logs[1], RunLogRecord("flow-1", 1, "x", now, 10, "other", "taken seq")])
    assert history.get_logs("flow-1") == [logs[1], logs[2], logs[0]]
    with pytest.raises(RunNotFound):
        history.get_logs("no-such-run")


def test_tracebacks_read_back(history: HistoryStore) -> None:
    now = time.time()
    flow = dataclasses.replace(_flow("flow-1", now), state="Failed", traceback="Traceback ...\n")
    task = TaskRunRecord("task-1", "flow-1", "t", "Failed", now, now, now, "ValueError: x")
    task = dataclasses.replace(task, traceback="Traceback (most recent call last):\n  ...\n")
    history.write([flow, task])
    detail = history.get_flow_run("flow-1")
    assert detail.run == flow
    assert detail.task_runs[0].run == task


def test_prune_deletes_the_logs_of_the_runs_it_deletes(history: HistoryStore) -> None:
    now = time.time()
    history.write([_flow("old", now - 10), _flow("new", now)])
    history.write(
        [RunLogRecord(r, 0, r, now, logging.INFO, "sluice.runs", r) for r in ("old", "new")]
    )
    assert history.prune(keep_runs=1) == 1
    assert [r.message for r in history.get_logs("new")] == ["new"]
    history.write([_flow("old", now - 10)])  # the same id again: its old logs are gone
    assert history.get_logs("old") == []
