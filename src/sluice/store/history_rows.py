"""What every history backend does alike: check arguments, turn records into rows, and
end the runs of a process that is gone.

Rows are tuples in the column orders below, which the SQL backends (SQLite,
PostgreSQL) use as they are; ``limits`` and ``tags`` are JSON arrays. A flow run row
is written with one more column, ``owner`` (:data:`FLOW_WRITE_COLUMNS`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sluice import settings
from sluice.errors import InvalidRequest
from sluice.store.history import (
    FlowRunDetail,
    FlowRunRecord,
    HistoryRecord,
    RunLogRecord,
    StateRecord,
    TaskRunRecord,
)

__all__ = [
    "FLOW_COLUMNS",
    "FLOW_WRITE_COLUMNS",
    "HISTORY_VERSION",
    "LOG_COLUMNS",
    "STATE_COLUMNS",
    "TASK_COLUMNS",
    "Owner",
    "Rows",
    "check_list_limit",
    "check_prune",
    "check_run_id",
    "crash_records",
    "flow_record",
    "from_json",
    "log_record",
    "new_owner_id",
    "rows_of",
    "task_record",
]

HISTORY_VERSION = 2
"""The run history's layout version: 1 had no owners, tracebacks or logs."""

FLOW_COLUMNS = (
    "id, flow, state, created_at, started_at, ended_at, message, parent_id, host, pid, traceback"
)
FLOW_WRITE_COLUMNS = FLOW_COLUMNS + ", owner"
TASK_COLUMNS = (
    "id, flow_run_id, task, state, created_at, started_at, ended_at, message, limits,"
    " occupy, attempts, tags, traceback"
)
STATE_COLUMNS = "run_id, flow_run_id, seq, name, timestamp, message, limit_name, position"
LOG_COLUMNS = "flow_run_id, seq, run_id, timestamp, level, logger, message"

Row = tuple[object, ...]


@dataclass
class Rows:
    """A batch as rows: the last record of each run wins; states keep their order."""

    flows: dict[str, Row] = field(default_factory=dict)
    tasks: dict[str, Row] = field(default_factory=dict)
    states: list[Row] = field(default_factory=list)
    logs: list[Row] = field(default_factory=list)
    open_flows: bool = False
    """Whether a flow run that has not ended is among them (its owner must be recorded)."""

    def __bool__(self) -> bool:
        return bool(self.flows or self.tasks or self.states or self.logs)


@functools.lru_cache(maxsize=1024)
def _json_list(names: tuple[str, ...]) -> str:
    """A tuple of names as a JSON array (the same few tuples, thousands of times)."""
    return json.dumps(list(names))


def rows_of(batch: Sequence[HistoryRecord], owner: str = "") -> Rows:
    """The batch's records as rows, flow runs owned by ``owner``; InvalidRequest for
    anything that is not a record."""
    rows = Rows()
    for record in batch:
        if isinstance(record, RunLogRecord):
            rows.logs.append(
                (
                    record.flow_run_id,
                    record.seq,
                    record.run_id,
                    record.timestamp,
                    record.level,
                    record.logger,
                    record.message,
                )
            )
        elif isinstance(record, StateRecord):
            rows.states.append(
                (
                    record.run_id,
                    record.flow_run_id,
                    record.seq,
                    record.name,
                    record.timestamp,
                    record.message,
                    record.limit,
                    record.position,
                )
            )
        elif isinstance(record, TaskRunRecord):
            rows.tasks.pop(record.id, None)  # the last one wins, in arrival order
            rows.tasks[record.id] = (
                record.id,
                record.flow_run_id,
                record.task,
                record.state,
                record.created_at,
                record.started_at,
                record.ended_at,
                record.message,
                _json_list(record.limits),
                record.occupy,
                record.attempts,
                _json_list(record.tags),
                record.traceback,
            )
        elif isinstance(record, FlowRunRecord):
            rows.flows.pop(record.id, None)
            rows.flows[record.id] = (
                record.id,
                record.flow,
                record.state,
                record.created_at,
                record.started_at,
                record.ended_at,
                record.message,
                record.parent_id,
                record.host,
                record.pid,
                record.traceback,
                owner,
            )
            rows.open_flows = rows.open_flows or record.ended_at is None
        else:
            raise InvalidRequest(f"not a history record: {record!r}")
    return rows


def check_list_limit(limit: object) -> int:
    """``limit`` of list_flow_runs: an int >= 1."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidRequest(f"limit must be an int >= 1, got {limit!r}")
    return limit


def check_run_id(run_id: object) -> str:
    """A run id: a non-empty str."""
    if not isinstance(run_id, str) or not run_id:
        raise InvalidRequest(f"run_id must be a non-empty str, got {run_id!r}")
    return run_id


def check_prune(keep_runs: object, max_age_seconds: object) -> tuple[int, float | None]:
    """prune's arguments: an int >= 0, and None or a number >= 0."""
    if isinstance(keep_runs, bool) or not isinstance(keep_runs, int) or keep_runs < 0:
        raise InvalidRequest(f"keep_runs must be an int >= 0, got {keep_runs!r}")
    if max_age_seconds is None:
        return keep_runs, None
    if (
        isinstance(max_age_seconds, bool)
        or not isinstance(max_age_seconds, (int, float))
        or not max_age_seconds >= 0
    ):
        raise InvalidRequest(
            f"max_age_seconds must be None or a number >= 0, got {max_age_seconds!r}"
        )
    return keep_runs, float(max_age_seconds)


def flow_record(row: Sequence[Any]) -> FlowRunRecord:
    """A flow run from a row in FLOW_COLUMNS order."""
    r = row
    return FlowRunRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], int(r[9]), r[10])


def log_record(row: Sequence[Any]) -> RunLogRecord:
    """A log record from a row in LOG_COLUMNS order."""
    r = row
    return RunLogRecord(r[0], int(r[1]), r[2], float(r[3]), int(r[4]), r[5], r[6])


def from_json(kind: type[Any], data: dict[str, Any]) -> Any:
    """A record of ``kind`` from its JSON object; fields it does not know are ignored, and
    ``limits`` and ``tags`` become tuples (records written by older and newer versions)."""
    known = {f.name for f in dataclasses.fields(kind)}
    values = {k: v for k, v in data.items() if k in known}
    for name in ("limits", "tags"):
        if name in values:
            values[name] = tuple(values[name] or ())
    return kind(**values)


def task_record(row: Sequence[Any]) -> TaskRunRecord:
    """A task run from a row in TASK_COLUMNS order; limits and tags as JSON text or lists."""

    def names(value: Any) -> tuple[str, ...]:
        return tuple(json.loads(value) if isinstance(value, str) else value)

    r = row
    return TaskRunRecord(
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        names(r[8]),
        int(r[9]),
        int(r[10]),
        names(r[11]),
        r[12],
    )


def new_owner_id() -> str:
    """A fresh owner id for a process's history handle."""
    return uuid.uuid4().hex[:20]


@dataclass(frozen=True)
class Owner:
    """A process that writes run history: who it is and its last heartbeat."""

    id: str
    host: str = ""
    pid: int = 0
    beat_at: float | None = None
    """Its last heartbeat, by its own clock (None: never recorded)."""
    every: float = 0.0
    """Its heartbeat interval, seconds."""

    @staticmethod
    def mine(owner_id: str) -> Owner:
        """This process as an owner, beating now."""
        return Owner(
            owner_id, socket.gethostname(), os.getpid(), time.time(), settings.history_heartbeat()
        )


def crash_records(
    detail: FlowRunDetail, owner: Owner, seen_gone: float, how: str
) -> list[HistoryRecord]:
    """The records that end a flow run of a gone owner, and its open task runs, as Crashed.

    The time of death is when the owner's first missed heartbeat was due, or
    ``seen_gone`` (when a reader saw it gone) if earlier, and never before the
    run's last recorded moment. ``how`` says how it was found gone.
    """
    death = seen_gone if owner.beat_at is None else min(seen_gone, owner.beat_at + owner.every)
    death = max(death, _last_moment(detail))
    who = f"pid {owner.pid} on {owner.host}" if owner.host else "its process"
    message = f"its process ({who}) {how}"
    flow = detail.run
    records: list[HistoryRecord] = [
        dataclasses.replace(flow, state="Crashed", ended_at=death, message=message),
        StateRecord(flow.id, flow.id, _next_seq(detail.states), "Crashed", death, message),
    ]
    for task_run in detail.task_runs:
        if task_run.run.ended_at is not None:
            continue
        task = dataclasses.replace(
            task_run.run, state="Crashed", ended_at=death, message=f"its flow run's {message}"
        )
        records.append(task)
        records.append(
            StateRecord(
                task.id, flow.id, _next_seq(task_run.states), "Crashed", death, task.message
            )
        )
    return records


def _next_seq(states: Iterable[StateRecord]) -> int:
    return max((s.seq for s in states), default=-1) + 1


def _last_moment(detail: FlowRunDetail) -> float:
    moments = [detail.run.created_at, detail.run.started_at or 0.0]
    moments += [s.timestamp for s in detail.states]
    for task_run in detail.task_runs:
        moments += [task_run.run.created_at, task_run.run.ended_at or 0.0]
        moments += [s.timestamp for s in task_run.states]
    return max(moments)
