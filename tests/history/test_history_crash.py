"""Runs of a process that is gone end Crashed, on every store that processes share.

A child process writes an open flow run (one task run ended, one running) and keeps
its heartbeat on time; then it is killed with SIGKILL (or paused with SIGSTOP). SQLite
knows at once (the child's lock file is free); Redis and PostgreSQL after
``MISSED_BEATS`` heartbeat intervals (``SLUICE_HISTORY_HEARTBEAT``, short here).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from conformance._helpers import stays, wait_until
from conformance._procs import SPAWN, child, expect
from conftest import StoreEntry
from sluice.store import _factory, canonical_url
from sluice.store.history import (
    MISSED_BEATS,
    FlowRunDetail,
    FlowRunRecord,
    HistoryStore,
    StateRecord,
    TaskRunDetail,
    TaskRunRecord,
)
from sluice.store.history_rows import Owner, crash_records

from . import _procs

EVERY = 0.2
"""Seconds between the child's heartbeats: its runs are gone 0.6 s after its last."""

pytestmark = pytest.mark.timeout(90)


Reader = Callable[[str], HistoryStore]


@pytest.fixture
def reader() -> Iterator[Reader]:
    """Opens history handles of their own (not this process's shared one): other
    readers, as another process would have; closed after the test."""
    opened: list[HistoryStore] = []

    def open_one(url: str) -> HistoryStore:
        key = canonical_url(url)
        history: HistoryStore = _factory(key, "history")(key)
        opened.append(history)
        return history

    yield open_one
    for history in opened:
        history.close()


def _crashed(history: HistoryStore) -> Callable[[], FlowRunDetail | None]:
    def probe() -> FlowRunDetail | None:
        detail = history.get_flow_run(_procs.FLOW_RUN)
        return detail if detail.run.state == "Crashed" else None

    return probe


@pytest.fixture
def beats(monkeypatch: pytest.MonkeyPatch) -> float:
    """A short heartbeat interval, for this process and the children it spawns."""
    monkeypatch.setenv("SLUICE_HISTORY_HEARTBEAT", str(EVERY))
    return EVERY


def test_the_runs_of_a_killed_process_end_crashed_at_its_time_of_death(
    cross_process_entry: StoreEntry, cross_process_url: str, beats: float, reader: Reader
) -> None:
    url = cross_process_url
    results = SPAWN.Queue()
    history = reader(url)
    with child(_procs.own_runs, url, results) as proc:
        expect(results, "ready")
        expect(results, "beat")
        assert history.get_flow_run(_procs.FLOW_RUN).run.state == "Running"
        stays(lambda: history.list_flow_runs(1)[0].state == "Running", 4 * beats, "Running")
        killed_at = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        if cross_process_entry.sees_local_deaths:
            detail = _crashed(history)()  # the lock file is free: the first read knows
            assert detail is not None, "SQLite did not see the dead process at once"
        else:
            detail = wait_until(_crashed(history), MISSED_BEATS * beats + 5, "Crashed")
        seen_at = time.time()

    death = detail.run.ended_at
    assert death is not None
    # When its first missed heartbeat was due: at most one interval before the kill
    # (a beat just before it) and never after a reader saw it.
    assert killed_at - beats <= death <= seen_at
    assert detail.run.message.startswith("its process (pid ")
    assert [s.name for s in detail.states] == ["Running", "Crashed"]
    assert detail.states[-1].timestamp == death
    tasks = {t.run.id: t for t in detail.task_runs}
    done, crashed = tasks[_procs.DONE_TASK], tasks[_procs.OPEN_TASK]
    assert done.run.state == "Completed" and done.run.ended_at != death
    assert [s.name for s in done.states] == ["Running", "Completed"]
    assert crashed.run.state == "Crashed" and crashed.run.ended_at == death
    assert [s.name for s in crashed.states] == ["Pending", "Running", "Crashed"]
    # Written once, for every reader: a listing and this process's shared handle agree.
    assert history.list_flow_runs(1)[0].state == "Crashed"
    assert reader(url).get_flow_run(_procs.FLOW_RUN) == detail


def test_a_paused_process_keeps_its_runs_on_sqlite_and_learns_it_lost_them_elsewhere(
    cross_process_entry: StoreEntry, cross_process_url: str, beats: float, reader: Reader
) -> None:
    """SQLite knows a paused process is alive (it holds its lock); Redis and PostgreSQL
    cannot tell it from a dead one: its runs end Crashed, and its next heartbeat says so."""
    url = cross_process_url
    results = SPAWN.Queue()
    history = reader(url)
    with child(_procs.own_runs, url, results) as proc:
        expect(results, "ready")
        expect(results, "beat")
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            if cross_process_entry.sees_local_deaths:
                stays(
                    lambda: history.get_flow_run(_procs.FLOW_RUN).run.state == "Running",
                    (MISSED_BEATS + 2) * beats,
                    "the paused process's run Running",
                )
                return
            wait_until(_crashed(history), MISSED_BEATS * beats + 5, "Crashed")
        finally:
            os.kill(proc.pid, signal.SIGCONT)

        def lost() -> bool:
            message = expect(results, "beat")
            return message[1] is False

        wait_until(lost, 10, "a heartbeat answering that the runs were ended")
        assert history.get_flow_run(_procs.FLOW_RUN).run.state == "Crashed"


def test_readers_end_the_runs_of_a_dead_process_once(
    cross_process_url: str, beats: float, reader: Reader
) -> None:
    url = cross_process_url
    results = SPAWN.Queue()
    with child(_procs.own_runs, url, results) as proc:
        expect(results, "ready")
        expect(results, "beat")
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        readers = [reader(url) for _ in range(4)]
        barrier = threading.Barrier(len(readers))
        seen: list[FlowRunDetail] = []

        def read(history: HistoryStore) -> None:
            barrier.wait(10)
            seen.append(wait_until(_crashed(history), MISSED_BEATS * beats + 5, "Crashed"))

        threads = [threading.Thread(target=read, args=(r,)) for r in readers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert len(seen) == len(readers)
    assert all(detail == seen[0] for detail in seen)
    states = [s.name for t in seen[0].task_runs for s in t.states]
    assert states.count("Crashed") == 1  # the open task run's, written once
    assert [s.name for s in seen[0].states] == ["Running", "Crashed"]


def test_the_runs_of_this_process_are_never_ended_by_its_own_reads(
    history: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_HISTORY_HEARTBEAT", "0.05")
    now = time.time()
    history.write([FlowRunRecord("mine", "f", "Running", now, now)])
    stays(
        lambda: history.list_flow_runs(1)[0].state == "Running",
        (MISSED_BEATS + 2) * 0.05,
        "this process's own run Running",
    )
    assert history.heartbeat() is True


def test_the_time_of_death_is_the_first_missed_beat_or_when_seen_gone() -> None:
    t0 = 1000.0
    run = FlowRunRecord("r", "f", "Running", t0, t0)
    detail = FlowRunDetail(
        run,
        (StateRecord("r", "r", 0, "Running", t0),),
        (
            TaskRunDetail(
                TaskRunRecord("a", "r", "t", "Running", t0, t0 + 1),
                (StateRecord("a", "r", 0, "Running", t0 + 1),),
            ),
        ),
    )
    owner = Owner("o", "host", 42, beat_at=t0 + 10, every=5.0)

    def death(seen_gone: float, of: FlowRunDetail = detail, who: Owner = owner) -> float | None:
        first = crash_records(of, who, seen_gone, "died")[0]
        assert isinstance(first, FlowRunRecord)
        return first.ended_at

    assert death(t0 + 100) == t0 + 15  # its next beat was due then
    assert death(t0 + 12) == t0 + 12  # seen gone before that (SQLite's lock)
    assert death(t0 + 100, who=Owner("o")) == t0 + 100  # no beat known: when seen gone
    late = FlowRunDetail(
        run, (StateRecord("r", "r", 0, "Running", t0), StateRecord("r", "r", 1, "x", t0 + 40)), ()
    )
    assert death(t0 + 100, of=late) == t0 + 40  # never before its last recorded moment
    records = crash_records(detail, owner, t0 + 100, "died")
    assert [type(r).__name__ for r in records] == [
        "FlowRunRecord",
        "StateRecord",
        "TaskRunRecord",
        "StateRecord",
    ]
    assert records[1] == StateRecord("r", "r", 1, "Crashed", t0 + 15, records[0].message)
    assert records[0].message == "its process (pid 42 on host) died"
