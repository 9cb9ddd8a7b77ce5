"""The PostgreSQL store's operations as plans: no I/O, driven by a sync and an async driver.

Every store operation is a plan (:mod:`sluice.store.plans`): a generator that
yields :class:`Call` objects (one SQL statement each, a step function of
``sql/``, run as its own transaction) and receives each one's result, then
returns the operation's outcome. :class:`~sluice.store.postgres.store.PostgresStore`
and its asyncio twin drive the same plans over psycopg's ``Connection`` and
``AsyncConnection``: the decisions (in SQL) and their parsing (here) exist once.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sluice.limits import gcra
from sluice.limits.model import Holder, Limit, LimitChanges, LimitStatus, LimitTotals, Waiter, utc
from sluice.store.base import AcquireRequest, Granted, Queued, Renewal, StoreDiagnosis
from sluice.store.plans import Plan
from sluice.store.postgres.config import SCHEMA_VERSION, PgConfig

__all__ = ["Call", "Engine", "wakes_in"]

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One SQL statement (a step function call) and how to read its single value."""

    sql: str
    params: tuple[Any, ...] = ()


# --------------------------------------------------------------------------- parsing


def _limit(data: dict[str, Any]) -> Limit:
    return Limit(
        data["name"],
        data["slots"],
        None if data["rate"] is None else float(data["rate"]),
        data["burst"],
        bool(data["active"]),
        float(data["lease_ttl"]),
    )


def _totals(data: dict[str, Any]) -> LimitTotals:
    return LimitTotals.from_store(
        data["grants"],
        data["granted_units"],
        data["timeouts"],
        data["reclaimed"],
        data["queued_waits"],
        data["wait_seconds"],
    )


def _outcome(data: dict[str, Any]) -> Granted | Queued:
    missing = tuple(data.get("missing") or ())
    if data["granted"]:
        return Granted(
            data["lease_id"],
            tuple(data["names"]),
            float(data["acquired_at"]),
            data["expires_at"],
            data["lease_ttl"],
            missing,
        )
    return Queued(
        data["request_id"],
        int(data["seq"]),
        data["blocked_on"],
        int(data["position"]),
        data["retry_in"],
        float(data["lease_ttl"]),
        missing,
    )


# --------------------------------------------------------------------------- the engine


@dataclass
class Engine:
    """This process's identity in one store, and every operation as a plan."""

    config: PgConfig
    process_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    waiting: set[str] = field(default_factory=set)
    """This process's queued request ids: woken all at once when the listener reconnects."""
    handed: dict[str, Granted] = field(default_factory=dict)
    """Grants that wake-ups brought for this process's waiters, by request id."""

    def keep_grants(self, grants: dict[str, Any]) -> None:
        """Keep the grants a wake-up carries, for their waiters to take."""
        for ticket_id, data in grants.items():
            granted = _outcome(data)
            if isinstance(granted, Granted) and granted.lease_id == ticket_id:
                self.handed[ticket_id] = granted

    def take_handed(self, request: AcquireRequest, store_now: float) -> Granted | None:
        """A grant a wake-up brought this waiter, if fresh: the first half of its TTL."""
        if request.seq is None:
            return None
        granted = self.handed.pop(request.request_id, None)
        if granted is None or granted.expires_at is None or granted.lease_ttl is None:
            return None
        if granted.expires_at - store_now < granted.lease_ttl / 2:
            return None  # away too long (paused, frozen): the store knows better
        self.waiting.discard(request.request_id)
        return granted

    @property
    def channel(self) -> str:
        """The LISTEN channel that carries this process's wake-ups."""
        return f"sluice_{self.process_id}"

    def _fn(self, name: str, casts: str) -> str:
        return f"SELECT {self.config.quoted_schema}.{name}({casts})"

    def _step(self, name: str, casts: str, *params: Any) -> Call[Any]:
        return Call(self._fn(name, casts), params)

    # ------------------------------------------------------------- reads

    def now(self) -> Plan[float]:
        value = yield self._step("_now", "")
        return float(value)

    def get_limit(self, name: str) -> Plan[Limit]:
        data = yield self._step("get_limit", "%s::text", name)
        return _limit(data)

    def list_limits(self) -> Plan[list[Limit]]:
        data = yield self._step("list_limits", "")
        return [_limit(d) for d in data]

    def diagnose(self) -> Plan[StoreDiagnosis]:
        """Read-only health facts; never creates or migrates the schema."""
        q = self.config.quoted_schema
        detail = f"{self.config.url} schema {self.config.schema}"
        exists = yield Call("SELECT to_regclass(%s) IS NOT NULL", (f"{q}.meta",))
        if not exists:
            detail += " (not created yet: it is created on first use)"
            return StoreDiagnosis("postgresql", detail, None, False, 0)
        version = yield Call(f"SELECT value::integer FROM {q}.meta WHERE key = 'schema_version'")
        expired = 0
        if version == SCHEMA_VERSION:
            data = yield self._step("diagnose", "")
            expired = int(data["expired_leases"])
        elif version is not None and version > SCHEMA_VERSION:
            detail += f" (version {version} is newer than this Sluice: upgrade it)"
        return StoreDiagnosis("postgresql", detail, version, version == SCHEMA_VERSION, expired)

    # ------------------------------------------------------------- admin

    def create_limit(self, limit: Limit) -> Plan[Limit]:
        yield self._define(limit, ensure=False)
        return limit

    def ensure_limit(self, limit: Limit) -> Plan[Limit]:
        data = yield self._define(limit, ensure=True)
        return _limit(data["limit"])

    def _define(self, limit: Limit, *, ensure: bool) -> Call[Any]:
        return self._step(
            "define_limit",
            "%s::text, %s::integer, %s::float8, %s::integer, %s::boolean, %s::float8, %s::text,"
            " %s::boolean",
            limit.name,
            limit.slots,
            limit.rate,
            limit.burst,
            limit.active,
            limit.lease_ttl,
            self.process_id,
            ensure,
        )

    def update_limit(self, name: str, changes: LimitChanges) -> Plan[Limit]:
        # Validated in Python against what was read; the step checks nothing moved
        # meanwhile (else 40001, and the driver runs the plan again).
        old = yield self._step("get_limit", "%s::text", name)
        new = changes.apply(_limit(old))
        data = yield self._step(
            "update_limit",
            "%s::text, %s::jsonb, %s::integer, %s::float8, %s::integer, %s::float8,"
            " %s::boolean, %s::text",
            name,
            json.dumps(old),
            new.slots,
            new.rate,
            new.burst,
            new.lease_ttl,
            changes.touches_rate(),
            self.process_id,
        )
        return _limit(data["limit"])

    def set_active(self, name: str, active: bool) -> Plan[Limit]:
        data = yield self._step(
            "set_active", "%s::text, %s::boolean, %s::text", name, active, self.process_id
        )
        return _limit(data["limit"])

    def reset_limit(self, name: str) -> Plan[int]:
        data = yield self._step("reset_limit", "%s::text, %s::text", name, self.process_id)
        return int(data["revoked"])

    def delete_limit(self, name: str, force: bool) -> Plan[None]:
        yield self._step(
            "delete_limit", "%s::text, %s::boolean, %s::text", name, force, self.process_id
        )

    def inspect_limit(self, name: str) -> Plan[LimitStatus]:
        data = yield self._step("inspect_limit", "%s::text, %s::text", name, self.process_id)
        limit = _limit(data["limit"])
        holders = [
            Holder(
                h["lease_id"],
                h["units"],
                h["holder"],
                h["host"],
                h["pid"],
                utc(h["since"]),
                utc(h["expires_at"]),
            )
            for h in data["holders"]
        ]
        waiters = [
            Waiter(
                w["ticket_id"], w["occupy"], w["holder"], w["host"], w["pid"], utc(w["since"]), i
            )
            for i, w in enumerate(data["waiters"], start=1)
        ]
        token_in = None
        if limit.rate is not None and limit.burst is not None:
            token_in = gcra.next_token_in(float(data["tat"]), data["now"], limit.rate, limit.burst)
        return LimitStatus(
            limit=limit,
            in_use=sum(h.occupy for h in holders),
            holders=holders,
            waiters=waiters,
            next_token_in=token_in,
            taken_at=utc(data["now"]),
            totals=_totals(data["totals"]),
        )

    # ------------------------------------------------------------- acquire & co

    def acquire(self, request: AcquireRequest) -> Plan[Granted | Queued]:
        data = yield self._step(
            "acquire",
            "%s::text, %s::text[], %s::integer, %s::text, %s::text, %s::text, %s::bigint,"
            " %s::text, %s::text, %s::integer",
            request.request_id,
            list(request.names),
            request.occupy,
            request.kind.value,
            request.holder,
            request.missing,
            request.seq,
            self.process_id,
            self.host,
            self.pid,
        )
        outcome = _outcome(data)
        if isinstance(outcome, Queued):
            self.waiting.add(request.request_id)
        else:
            self.waiting.discard(request.request_id)
        return outcome

    def release(self, lease_id: str) -> Plan[bool]:
        data = yield self._step("release", "%s::text, %s::text", lease_id, self.process_id)
        return bool(data["found"])

    def renew(self, lease_ids: Sequence[str], ticket_ids: Sequence[str]) -> Plan[Renewal]:
        data = yield self._step(
            "renew",
            "%s::text[], %s::text[], %s::text",
            list(lease_ids),
            list(ticket_ids),
            self.process_id,
        )
        return Renewal(
            frozenset(data["lost_leases"]),
            frozenset(data["lost_tickets"]),
            {k: float(v) for k, v in data["expires_at"].items()},
        )

    def abandon(self, request_id: str, timed_out_on: str | None = None) -> Plan[None]:
        self.waiting.discard(request_id)
        self.handed.pop(request_id, None)
        yield self._step(
            "abandon", "%s::text, %s::text, %s::text", request_id, self.process_id, timed_out_on
        )

    def forget_process(self) -> Plan[None]:
        """Give back every lease and queue place of this process (a normal exit)."""
        self.waiting.clear()
        self.handed.clear()
        yield self._step("forget_process", "%s::text", self.process_id)


def wakes_in(result: Any) -> list[str]:
    """The ticket ids of this process that a step's result says to wake."""
    if isinstance(result, dict):
        wake = result.get("wake")
        if wake:
            return list(wake)
    return []
