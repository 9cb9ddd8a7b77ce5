"""The audit record of admin actions as people and JSON see it (``sluice limit history``,
the dashboard's limit page)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from sluice.report.limits import table
from sluice.report.times import json_time, shown
from sluice.report.units import format_duration, format_rate
from sluice.store import acquire_store, release_store
from sluice.store.audit import AdminRecord

__all__ = ["changes_text", "history_text", "read_history", "record_json"]


def read_history(url: str, name: str, count: int = 20) -> list[AdminRecord]:
    """The newest ``count`` admin records of limit ``name`` in the store at ``url``."""
    store = acquire_store(url)
    try:
        return store.admin_history(name, count)
    finally:
        release_store(store)


def record_json(record: AdminRecord) -> dict[str, Any]:
    """One record as ``limit history --json`` prints it."""
    return {
        "limit": record.limit,
        "action": record.action,
        "at": json_time(record.at),
        "who": {**asdict(record.who), "text": record.who.describe()},
        "changes": dict(record.changes),
        "what": changes_text(record.action, record.changes),
    }


def _value(name: str, value: Any) -> str:
    if value is None:
        return "none"
    if name == "rate":
        return format_rate(float(value))
    if name == "lease_ttl":
        return format_duration(float(value))
    if name == "active":
        return "yes" if value else "no"
    return str(value)


def changes_text(action: str, changes: Mapping[str, Any]) -> str:
    """``slots 2 -> 5``; ``revoked 3 leases``; ``forced, had slots 5, ...``."""
    if action == "reset":
        revoked = int(changes.get("revoked", 0))
        return f"revoked {revoked} lease{'' if revoked == 1 else 's'}"
    if action == "delete":
        old = changes.get("limit") or {}
        had = ", ".join(
            f"{k.replace('_', ' ')} {_value(k, old[k])}"
            for k in ("slots", "rate", "burst", "lease_ttl")
            if old.get(k) is not None
        )
        return ("forced (its leases revoked)" if changes.get("force") else "not forced") + (
            f"; it had {had}" if had else ""
        )
    parts = []
    order = ("slots", "rate", "burst", "lease_ttl", "active")
    ranked = sorted(changes.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9)
    for key, change in ranked:
        if isinstance(change, Mapping) and "from" in change:
            label = key.replace("_", " ")
            parts.append(
                f"{label} {_value(key, change['from'])} -> {_value(key, change.get('to'))}"
            )
        else:
            parts.append(f"{key} {change}")
    return ", ".join(parts) or "no change"


def history_text(name: str, records: Sequence[AdminRecord]) -> str:
    """``limit history``: one line per record, newest first."""
    if not records:
        return f"no admin actions recorded for limit {name!r}"
    rows = [
        [shown(r.at), r.action, r.who.describe(), changes_text(r.action, r.changes)]
        for r in records
    ]
    return table(["WHEN (UTC)", "ACTION", "WHO", "WHAT"], rows)
