"""The SQLite store's audit record of admin actions (table ``sluice_admin``).

The admin steps write their record in their own transaction (:func:`record`): an action
and its record commit together or not at all. Records are kept by limit name, the newest
:data:`~sluice.store.audit.ADMIN_KEEP` per name; reads take no write lock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import Any

from sluice.limits.model import validate_name
from sluice.store.audit import (
    ADMIN_KEEP,
    AdminRecord,
    check_history_count,
    current_actor,
    record_from_json,
)
from sluice.store.sqlite.tx import Tx

__all__ = ["AdminLog", "record"]


def record(tx: Tx, name: str, action: str, changes: Mapping[str, Any]) -> AdminRecord:
    """Put an admin action on record in the step's transaction, as the current actor's."""
    entry = AdminRecord(name, action, tx.now, current_actor(), dict(changes))
    tx.run(
        "INSERT INTO sluice_admin (limit_name, action, at, who, changes) VALUES (?, ?, ?, ?, ?)",
        (name, action, entry.at, json.dumps(asdict(entry.who)), json.dumps(entry.changes)),
    )
    # The newest ADMIN_KEEP of the name stay (an index range: cheap).
    tx.run(
        "DELETE FROM sluice_admin WHERE limit_name = ? AND id < (SELECT id FROM sluice_admin"
        " WHERE limit_name = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (name, name, ADMIN_KEEP - 1),
    )
    return entry


def _record_of(row: Sequence[Any]) -> AdminRecord:
    limit, action, at, who, changes = row
    return record_from_json(
        {
            "limit": limit,
            "action": action,
            "at": at,
            "who": json.loads(who),
            "changes": json.loads(changes),
        }
    )


class AdminLog:
    """The Store protocol's audit operations, for the SQLite and memory stores."""

    def _tx(self) -> AbstractContextManager[Tx]:
        raise NotImplementedError  # pragma: no cover - SQLiteStore's

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        raise NotImplementedError  # pragma: no cover - Reads'

    def record_admin(self, name: str, action: str, changes: Mapping[str, Any]) -> AdminRecord:
        """Record an admin action done outside the store's own steps."""
        with self._tx() as tx:
            return record(tx, validate_name(name), action, changes)

    def admin_history(self, name: str, count: int = 100) -> list[AdminRecord]:
        """The newest records of the named limit, newest first."""
        rows = self._read(
            "SELECT limit_name, action, at, who, changes FROM sluice_admin"
            " WHERE limit_name = ? ORDER BY id DESC LIMIT ?",
            (validate_name(name), check_history_count(count)),
        )
        return [_record_of(row) for row in rows]
