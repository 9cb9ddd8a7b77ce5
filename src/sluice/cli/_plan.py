"""``sluice limit apply``: limits declared in a file, compared with the store, applied.

A plan is computed and checked whole before anything changes: every declared
limit is validated, and a prune that would delete a held limit without
``--force`` is refused. Applying never touches holders: ``update`` changes
numbers in place, and only a forced prune revokes leases.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from sluice.cli._common import EXIT_CONFLICT, CLIError, translate
from sluice.errors import ConfigError, InvalidRequest, LimitNotFound, SluiceError
from sluice.limits.model import DEFAULT_LEASE_TTL, Limit, validate_name
from sluice.limits.sync import Limits
from sluice.report.limits import changes_json, diff_limits, limit_json
from sluice.report.units import parse_duration, parse_rate
from sluice.settings import ConfigFile, unknown_key

__all__ = ["LIMIT_KEYS", "Action", "ActionKind", "Plan", "apply_plan", "make_plan", "read_declared"]

LIMIT_KEYS: Final = ("slots", "rate", "burst", "lease_ttl", "active")
"""The keys a ``[limits.NAME]`` table may hold."""

ActionKind = Literal["create", "update", "unchanged", "delete"]


@dataclass(frozen=True)
class Action:
    """One step of a plan: what happens to one limit."""

    kind: ActionKind
    name: str
    limit: Limit
    """The declared definition; for a delete, the stored one."""
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    holders: int = 0
    """Leases holding the limit (deletes only)."""

    def to_json(self) -> dict[str, Any]:
        """The action as in ``apply --json``."""
        doc: dict[str, Any] = {
            "action": self.kind,
            "name": self.name,
            "limit": limit_json(self.limit),
            "changes": changes_json(self.changes),
        }
        if self.kind == "delete":
            doc["holders"] = self.holders
        return doc


@dataclass(frozen=True)
class Plan:
    """Every action, in order, and the stored limits the file does not mention."""

    actions: list[Action]
    unmanaged: list[str]

    def count(self, kind: ActionKind) -> int:
        """How many actions of this kind."""
        return sum(1 for a in self.actions if a.kind == kind)


def _convert(config: ConfigFile, name: str, key: str, value: object) -> object:
    where = config.where("limits", name)
    if key == "rate" and isinstance(value, str):
        try:
            return parse_rate(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: rate: {exc}") from None
    if key == "lease_ttl" and isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: lease_ttl: {exc}") from None
    return value


def read_declared(config: ConfigFile) -> list[Limit]:
    """The limits declared in a file's ``[limits.NAME]`` tables, each checked whole."""
    tables = config.settings.get("limits")
    if tables is None:
        raise ConfigError(
            f"{config.where()} declares no limits; add tables like "
            f"[{'.'.join(p for p in (config.table, 'limits') if p)}.NAME] with slots = 20"
        )
    declared = []
    problems: list[str] = []
    for name, table in sorted(tables.items()):
        try:
            declared.append(_declared(config, name, table))
        except ConfigError as exc:
            problems.append(str(exc))
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(
            f"{len(problems)} limits in {config.where()} are invalid; nothing was changed:\n  "
            + "\n  ".join(problems)
        )
    return declared


def _declared(config: ConfigFile, name: str, table: object) -> Limit:
    """One ``[limits.NAME]`` table, checked whole."""
    where = config.where("limits", name)
    try:
        validate_name(name)
    except InvalidRequest as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table of {', '.join(LIMIT_KEYS)}, got {table!r}")
    unknown = sorted(set(table) - set(LIMIT_KEYS))
    if unknown:
        raise ConfigError(f"{where}: {unknown_key(unknown[0], LIMIT_KEYS)}")
    values = {key: _convert(config, name, key, value) for key, value in table.items()}
    try:
        return Limit.build(
            name,
            slots=values.get("slots"),
            rate=values.get("rate"),
            burst=values.get("burst"),
            active=values.get("active", True),
            lease_ttl=values.get("lease_ttl", DEFAULT_LEASE_TTL),
        )
    except InvalidRequest as exc:
        raise ConfigError(f"{where}: {exc}") from None


def make_plan(limits: Limits, declared: list[Limit], prune: bool, force: bool) -> Plan:
    """Compare declared limits with the store; refuse a prune of held limits unless forced."""
    stored = {limit.name: limit for limit in limits.list()}
    actions = []
    for limit in declared:
        current = stored.get(limit.name)
        if current is None:
            actions.append(Action("create", limit.name, limit))
            continue
        changes = diff_limits(current, limit)
        actions.append(Action("update" if changes else "unchanged", limit.name, limit, changes))
    names = {limit.name for limit in declared}
    extra = sorted(set(stored) - names)
    if not prune:
        return Plan(actions, extra)
    busy = []
    for name in extra:
        try:
            holders = len(limits.inspect(name).holders)
        except LimitNotFound:
            continue  # deleted meanwhile: nothing left to prune
        actions.append(Action("delete", name, stored[name], holders=holders))
        if holders:
            busy.append(f"{name!r} ({holders} holder{'s' if holders > 1 else ''})")
    if busy and not force:
        raise CLIError(
            f"not pruning held limit(s) {', '.join(busy)}; nothing was changed. Wait for "
            "their holders, reset them with `sluice limit reset NAME`, or add --force",
            EXIT_CONFLICT,
        )
    return Plan(actions, [])


def apply_plan(limits: Limits, plan: Plan, force: bool) -> None:
    """Carry out the plan's creates, updates and deletes, in order.

    Everything was checked before the first change; should the store fail part
    way, the error says which actions were done and which were not.
    """
    done: list[str] = []
    for index, action in enumerate(plan.actions):
        try:
            _apply(limits, action, force)
        except SluiceError as exc:
            if not done:
                raise
            left = [f"{a.kind} {a.name}" for a in plan.actions[index:] if a.kind != "unchanged"]
            raise CLIError(
                f"{exc}; done before it: {', '.join(done)}; not done: {', '.join(left)}. "
                "Run `sluice limit apply` again once the store answers: it applies what is left",
                translate(exc).exit_code,
            ) from exc
        if action.kind != "unchanged":
            done.append(f"{action.kind} {action.name}")


def _apply(limits: Limits, action: Action, force: bool) -> None:
    limit = action.limit
    if action.kind == "create":
        limits.create(
            limit.name,
            slots=limit.slots,
            rate=limit.rate,
            burst=limit.burst,
            lease_ttl=limit.lease_ttl,
            active=limit.active,
        )
    elif action.kind == "update":
        _update(limits, action)
    elif action.kind == "delete":
        limits.delete(limit.name, force=force)


def _update(limits: Limits, action: Action) -> None:
    limit, changed = action.limit, action.changes
    fields: dict[str, object] = {}
    if "slots" in changed:
        fields["slots"] = limit.slots
    if "rate" in changed or "burst" in changed:  # the bucket restarts full only then
        fields["rate"] = limit.rate
        fields["burst"] = limit.burst
    if "lease_ttl" in changed:
        fields["lease_ttl"] = limit.lease_ttl
    if fields:
        limits.update(limit.name, **fields)
    if "active" in changed:
        (limits.enable if limit.active else limits.disable)(limit.name)
