"""What every history backend does alike: check arguments, and turn records into rows.

Rows are tuples in the column orders below, which the SQL backends (SQLite,
PostgreSQL) use as they are; ``limits`` and ``tags`` are JSON arrays.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sluice.errors import InvalidRequest
from sluice.store.history import FlowRunRecord, HistoryRecord, StateRecord, TaskRunRecord

__all__ = [
    "FLOW_COLUMNS",
    "STATE_COLUMNS",
    "TASK_COLUMNS",
    "Rows",
    "check_list_limit",
    "check_prune",
    "check_run_id",
    "flow_record",
    "rows_of",
    "task_record",
]

FLOW_COLUMNS = "id, flow, state, created_at, started_at, ended_at, message, parent_id, host, pid"
TASK_COLUMNS = (
    "id, flow_run_id, task, state, created_at, started_at, ended_at, message, limits,"
    " occupy, attempts, tags"
)
STATE_COLUMNS = "run_id, flow_run_id, seq, name, timestamp, message, limit_name, position"

Row = tuple[object, ...]


@dataclass
class Rows:
    """A batch as rows: the last record of each run wins; states keep their order."""

    flows: dict[str, Row] = field(default_factory=dict)
    tasks: dict[str, Row] = field(default_factory=dict)
    states: list[Row] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.flows or self.tasks or self.states)


@functools.lru_cache(maxsize=1024)
def _json_list(names: tuple[str, ...]) -> str:
    """A tuple of names as a JSON array (the same few tuples, thousands of times)."""
    return json.dumps(list(names))


def rows_of(batch: Sequence[HistoryRecord]) -> Rows:
    """The batch's records as rows; InvalidRequest for anything that is not a record."""
    rows = Rows()
    for record in batch:
        if isinstance(record, StateRecord):
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
            )
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
    return FlowRunRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], int(r[9]))


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
    )
