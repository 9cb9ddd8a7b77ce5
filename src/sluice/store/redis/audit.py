"""The Redis store's audit record of admin actions, as plans (no I/O).

Each admin step is followed, once its script succeeded, by ``scripts/admin_record.lua``,
which pushes the record on the list ``P:admin:NAME`` (newest first, the newest
:data:`~sluice.store.audit.ADMIN_KEEP` kept) with the server's time. Right after, not
inside: Redis scripts cannot call one another, the step scripts are the engine's, and a
``MULTI`` would record a step that failed too. A process that dies between the two, or
a record that cannot be written (the action is done: its caller is told it succeeded),
leaves the action unrecorded; the second case is logged as a warning.

What changed is read around the step: the limit before it (one read more) and after it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from sluice.errors import SluiceError
from sluice.limits.model import Limit, LimitChanges
from sluice.store.audit import ADMIN_KEEP, AdminRecord, current_actor, definition, limit_changes
from sluice.store.audit import record_from_json as _from_json
from sluice.store.plans import Plan
from sluice.store.redis.config import RedisConfig
from sluice.store.redis.plans import Command, Engine, Script

__all__ = ["delete", "history", "record", "reset", "set_active", "update"]

_log = logging.getLogger("sluice.store.redis")


def _key(config: RedisConfig, name: str) -> str:
    return f"{{{config.prefix}}}:admin:{name}"


def record(name: str, action: str, changes: Mapping[str, Any]) -> Plan[AdminRecord]:
    """Put an action on record now (the server's clock), as the current actor's."""
    who = current_actor()
    body = {"limit": name, "action": action, "who": asdict(who), "changes": dict(changes)}
    raw = yield Script("admin_record", (name, json.dumps(body), ADMIN_KEEP))
    at = float(raw.decode() if isinstance(raw, bytes) else raw)
    return AdminRecord(name, action, at, who, dict(changes))


def _after(name: str, action: str, changes: Mapping[str, Any]) -> Plan[None]:
    """Record an action that is done: a failure is logged, not raised."""
    try:
        yield from record(name, action, changes)
    except SluiceError as exc:
        _log.warning("limit %r: %s done but not put on the audit record: %s", name, action, exc)


def update(engine: Engine, name: str, changes: LimitChanges) -> Plan[Limit]:
    """Update a limit, then record what changed."""
    before = yield from engine.get_limit(name)
    after = yield from engine.update_limit(name, changes)
    yield from _after(name, "update", limit_changes(before, after))
    return after


def set_active(engine: Engine, name: str, active: bool) -> Plan[Limit]:
    """Enable or disable a limit, then record it."""
    before = yield from engine.get_limit(name)
    after = yield from engine.set_active(name, active)
    yield from _after(name, "enable" if active else "disable", limit_changes(before, after))
    return after


def reset(engine: Engine, name: str) -> Plan[int]:
    """Reset a limit, then record how many leases it revoked."""
    revoked = yield from engine.reset_limit(name)
    yield from _after(name, "reset", {"revoked": revoked})
    return revoked


def delete(engine: Engine, name: str, force: bool) -> Plan[None]:
    """Delete a limit, then record it with the definition it had."""
    before = yield from engine.get_limit(name)
    yield from engine.delete_limit(name, force)
    yield from _after(name, "delete", {"force": force, "limit": definition(before)})


def history(config: RedisConfig, name: str, count: int) -> Plan[list[AdminRecord]]:
    """The newest ``count`` records of a limit, newest first."""
    raw = yield Command("LRANGE", (_key(config, name), 0, count - 1))
    out = []
    for entry in raw or ():
        text = entry.decode() if isinstance(entry, bytes) else str(entry)
        at, _, body = text.partition("|")
        out.append(_from_json({**json.loads(body), "at": float(at)}))
    return out
