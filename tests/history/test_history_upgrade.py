"""A run history written by version 1 (no owners, tracebacks or logs) upgrades in place.

Each store is laid out as version 1 left it, with an ended flow run and one that never
ended (its process is long gone, but version 1 recorded no owner), then opened by this
version: the old runs read back as they were, the open one is left alone (nothing
says whose it was), the new features work, and the layout says version 2. A history
newer than this Sluice is refused.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance._helpers import stays
from conftest import PG_DSN, require_module
from sluice.errors import StoreError
from sluice.store import _factory, canonical_url
from sluice.store.history import FlowRunRecord, HistoryStore, RunLogRecord, StateRecord
from sluice.store.history_rows import HISTORY_VERSION

from .conftest import HISTORY_STORES

T0 = 1_700_000_000.0
FLOW_V1: dict[str, Any] = {
    "id": "old-done",
    "flow": "etl",
    "state": "Completed",
    "created_at": T0,
    "started_at": T0,
    "ended_at": T0 + 5,
    "message": "",
    "parent_id": None,
    "host": "h",
    "pid": 7,
}
OPEN_V1: dict[str, Any] = {
    **FLOW_V1,
    "id": "old-open",
    "state": "Running",
    "ended_at": None,
    "created_at": T0 + 1,
}
TASK_V1: dict[str, Any] = {
    "id": "old-task",
    "flow_run_id": "old-done",
    "task": "extract",
    "state": "Completed",
    "created_at": T0,
    "started_at": T0,
    "ended_at": T0 + 1,
    "message": "",
    "limits": ["db"],
    "occupy": 1,
    "attempts": 1,
    "tags": [],
}
STATE_V1: dict[str, Any] = {
    "run_id": "old-task",
    "flow_run_id": "old-done",
    "seq": 0,
    "name": "Completed",
    "timestamp": T0 + 1,
    "message": "",
    "limit": None,
    "position": None,
}


def _sqlite_v1(url: str) -> Callable[[int], None]:
    from sluice.store.sqlite.history_schema import _TABLES_V1

    path = url[len("sqlite:///") :]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        for statement in _TABLES_V1:
            conn.execute(statement)
        for run in (FLOW_V1, OPEN_V1):
            conn.execute(
                f"INSERT INTO sluice_history_flow_runs ({', '.join(run)})"
                f" VALUES ({', '.join('?' * len(run))})",
                list(run.values()),
            )
        task = {**TASK_V1, "limits": json.dumps(TASK_V1["limits"]), "tags": "[]"}
        conn.execute(
            f"INSERT INTO sluice_history_task_runs ({', '.join(task)})"
            f" VALUES ({', '.join('?' * len(task))})",
            list(task.values()),
        )
        state = {**STATE_V1, "limit_name": None}
        del state["limit"]
        conn.execute(
            f"INSERT INTO sluice_history_states ({', '.join(state)})"
            f" VALUES ({', '.join('?' * len(state))})",
            list(state.values()),
        )

    def set_version(version: int) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(
                "UPDATE sluice_history_meta SET value = ? WHERE key = 'version'", (version,)
            )

    return set_version


def _postgres_v1(url: str) -> Callable[[int], None]:
    psycopg = require_module("psycopg", "postgres")
    from sluice.store.postgres.history import _TABLES_V1

    schema = url.split("schema=", 1)[1]
    q = f'"{schema}"'
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {q}")
        conn.execute(_TABLES_V1.format(q=q))
        for run in (FLOW_V1, OPEN_V1):
            conn.execute(
                f"INSERT INTO {q}.history_flow_runs ({', '.join(run)})"
                f" VALUES ({', '.join(['%s'] * len(run))})",
                list(run.values()),
            )
        task = {**TASK_V1, "limits": json.dumps(TASK_V1["limits"]), "tags": "[]"}
        conn.execute(
            f"INSERT INTO {q}.history_task_runs ({', '.join(task)})"
            f" VALUES ({', '.join(['%s'] * len(task))})",
            list(task.values()),
        )
        state = {**STATE_V1, "limit_name": None}
        del state["limit"]
        conn.execute(
            f"INSERT INTO {q}.history_states ({', '.join(state)})"
            f" VALUES ({', '.join(['%s'] * len(state))})",
            list(state.values()),
        )

    def set_version(version: int) -> None:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(
                f"UPDATE {q}.history_meta SET value = %s WHERE key = 'version'", (str(version),)
            )

    return set_version


def _redis_v1(url: str) -> Callable[[int], None]:
    redis = require_module("redis", "redis")
    prefix = url.split("prefix=", 1)[1]
    base = f"{{{prefix}}}:hist"
    client: Any = redis.Redis.from_url(url.split("?", 1)[0])
    for run in (FLOW_V1, OPEN_V1):
        client.set(f"{base}:run:{run['id']}", json.dumps(run))
        client.zadd(f"{base}:runs", {run["id"]: run["created_at"]})
    client.hset(f"{base}:tasks:old-done", "old-task", json.dumps(TASK_V1))
    client.hset(f"{base}:states:old-done", "old-task:0", json.dumps(STATE_V1))

    def set_version(version: int) -> None:
        client.set(f"{base}:version", version)

    return set_version


_V1 = {"sqlite": _sqlite_v1, "postgres": _postgres_v1, "redis": _redis_v1}
_ENTRIES = [e for e in HISTORY_STORES if e.id in _V1]


@pytest.fixture(params=_ENTRIES, ids=[e.id for e in _ENTRIES])
def v1(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Callable[[int], None]]]:
    """A store URL whose history is laid out as version 1, and how to set its version."""
    with request.param.make(tmp_path) as url:
        yield url, _V1[request.param.id](url)


def _open(url: str) -> HistoryStore:
    key = canonical_url(url)
    history: HistoryStore = _factory(key, "history")(key)
    return history


def test_a_version_1_history_upgrades_in_place(
    v1: tuple[str, Callable[[int], None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = v1
    monkeypatch.setenv("SLUICE_HISTORY_HEARTBEAT", "0.05")
    history = _open(url)
    try:
        runs = {r.id: r for r in history.list_flow_runs(10)}
        assert runs["old-done"] == FlowRunRecord(**FLOW_V1)  # traceback "" by default
        assert runs["old-open"].state == "Running"  # no owner recorded: left alone
        detail = history.get_flow_run("old-done")
        assert detail.task_runs[0].run.task == "extract"
        assert detail.task_runs[0].run.limits == ("db",)
        assert detail.task_runs[0].run.traceback == ""
        assert detail.task_runs[0].states == (StateRecord(**STATE_V1),)
        assert history.get_logs("old-done") == []
        # What version 2 adds works on the upgraded store.
        now = time.time()
        log = RunLogRecord("old-done", 0, "old-task", now, logging.INFO, "sluice.runs", "hi")
        history.write([FlowRunRecord("new", "etl", "Running", now, now), log])
        assert history.get_logs("old-done") == [log]
        assert history.heartbeat() is True
        stays(
            lambda: history.get_flow_run("old-open").run.state == "Running",
            0.2,  # 4 heartbeat intervals: an old open run is still not ended
            "the version 1 run Running",
        )
    finally:
        history.close()
    reopened = _open(url)  # a second opening finds version 2: nothing to do
    try:
        assert {r.id for r in reopened.list_flow_runs(10)} == {"old-done", "old-open", "new"}
    finally:
        reopened.close()


def test_a_history_newer_than_this_sluice_is_refused(
    v1: tuple[str, Callable[[int], None]],
) -> None:
    url, set_version = v1
    history = _open(url)
    try:
        history.list_flow_runs(1)  # upgraded to this version
    finally:
        history.close()
    set_version(HISTORY_VERSION + 1)
    newer = _open(url)
    try:
        with pytest.raises(StoreError, match=f"version {HISTORY_VERSION + 1}, newer"):
            newer.list_flow_runs(1)
    finally:
        newer.close()
