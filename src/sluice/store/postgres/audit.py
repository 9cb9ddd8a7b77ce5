"""The PostgreSQL store's audit record of admin actions, as calls (no I/O).

An admin step's call is wrapped in ``admin_record`` (``sql/admin.sql``): the step runs
as its argument, in the same statement and so the same transaction, and the record is
written with it or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from sluice.store.audit import AdminRecord, current_actor, record_from_json

__all__ = ["audited", "history_call", "record_call", "records_of"]


def _who() -> str:
    return json.dumps(asdict(current_actor()))


def audited(
    schema: str,
    sql: str,
    params: tuple[Any, ...],
    name: str,
    action: str,
    *,
    before: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[str, tuple[Any, ...]]:
    """A step's ``SELECT schema.step(...)`` as a statement that also records the action.

    ``before`` is the limit as the caller read it (JSON); without it, the limit as the
    statement's snapshot has it (before the step changed it).
    """
    call = sql.removeprefix("SELECT ")
    if before is None:
        prior = f"(SELECT {schema}._limit_json(l) FROM {schema}.limits l WHERE l.name = %s)"
        prior_params: tuple[Any, ...] = (name,)
    else:
        prior, prior_params = "%s::jsonb", (before,)
    wrapped = (
        f"SELECT {schema}.admin_record({call}, {prior}, %s::text, %s::text, %s::jsonb, %s::jsonb)"
    )
    return wrapped, (*params, *prior_params, name, action, json.dumps(dict(extra or {})), _who())


def record_call(
    schema: str, name: str, action: str, changes: Mapping[str, Any]
) -> tuple[str, tuple[Any, ...]]:
    """The statement that records an action done outside a step."""
    sql = (
        f"SELECT {schema}.admin_record('{{}}'::jsonb, NULL, %s::text, %s::text, %s::jsonb,"
        " %s::jsonb)"
    )
    return sql, (name, action, json.dumps(dict(changes)), _who())


def history_call(schema: str, name: str, count: int) -> tuple[str, tuple[Any, ...]]:
    """The statement that reads a limit's newest ``count`` records."""
    return f"SELECT {schema}.admin_history(%s::text, %s::integer)", (name, count)


def records_of(data: list[dict[str, Any]]) -> list[AdminRecord]:
    """The records ``admin_history`` answered."""
    return [record_from_json(d) for d in data]
