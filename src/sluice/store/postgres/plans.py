"""The PostgreSQL store's operations as plans: no I/O, driven by the store's sync driver.

Every store operation is a plan (:mod:`sluice.store.plans`): a generator that
yields :class:`Call` objects (one SQL statement each, a step function of
``sql/``, run as its own transaction) and receives each one's result, then
returns the operation's outcome. :class:`~sluice.store.postgres.store.PostgresStore`
drives them over psycopg connections: the decisions (in SQL) and their parsing
(here) exist once, apart from any I/O.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sluice.errors import StoreUnavailable
from sluice.limits import gcra
from sluice.limits.model import Holder, Limit, LimitChanges, LimitStatus, LimitTotals, Waiter, utc
from sluice.store.audit import AdminRecord, current_actor
from sluice.store.base import (
    AcquireRequest,
    Exchange,
    Exchanged,
    Granted,
    HeldSpan,
    Queued,
    Renewal,
    StoreDiagnosis,
)
from sluice.store.plans import Plan, Sleep
from sluice.store.postgres import audit
from sluice.store.postgres.config import SCHEMA_VERSION, PgConfig, StepOverdue, refusal

__all__ = ["Call", "Engine", "wakes_in"]

T = TypeVar("T")

_RESEND_DELAYS = (0.0, 0.1, 0.5)
"""Seconds before each resend of an exchange whose connection failed (then it fails)."""


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


def _granted(data: dict[str, Any]) -> Granted:
    return Granted(
        data["lease_id"],
        tuple(data["names"]),
        float(data["acquired_at"]),
        None if data["expires_at"] is None else float(data["expires_at"]),
        None if data["lease_ttl"] is None else float(data["lease_ttl"]),
        tuple(data.get("missing") or ()),
        data["ticket_id"],
    )


def _queued(data: dict[str, Any]) -> Queued:
    return Queued(
        data["request_id"],
        int(data["seq"]),
        data["blocked_on"],
        int(data["position"]),
        None if data["retry_in"] is None else float(data["retry_in"]),
        float(data["lease_ttl"]),
        tuple(data.get("missing") or ()),
        int(data["wanted"]),
    )


def _exchanged(data: dict[str, Any]) -> Exchanged:
    return Exchanged(
        {lease_id: bool(found) for lease_id, found in data["released"].items()},
        tuple(_granted(g) for g in data["grants"]),
        {ticket_id: _queued(q) for ticket_id, q in data["queued"].items()},
        {key: refusal(detail) for key, detail in data["refused"].items()},
        dict(data["joined"]),
        {key: tuple(names) for key, names in data["missing"].items()},
    )


def _request(request: AcquireRequest) -> dict[str, Any]:
    return {
        "id": request.request_id,
        "names": list(request.names),
        "occupy": request.occupy,
        "kind": request.kind.value,
        "holder": request.holder,
        "missing": request.missing,
        "count": request.count,
        "join": request.join,
    }


# --------------------------------------------------------------------------- the engine


@dataclass
class Engine:
    """This process's identity in one store, and every operation as a plan."""

    config: PgConfig
    process_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    waiting: set[str] = field(default_factory=set)
    """This process's tickets that wait: woken all at once when the listener reconnects.
    (Replaced, never changed in place: the listener's thread reads it.)"""
    _steps: Iterator[int] = field(default_factory=lambda: itertools.count(1))

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

    def held_spans(self, names: Sequence[str], since: float, until: float) -> Plan[list[HeldSpan]]:
        """Who held these limits' units in [since, until]: ended leases on record, and now."""
        wanted = sorted(set(names))
        if not wanted:
            return []
        data = yield self._step(
            "held_spans", "%s::text[], %s::float8, %s::float8", wanted, since, until
        )
        return [
            HeldSpan(
                str(name),
                str(holder),
                int(units),
                float(acquired),
                None if released is None else float(released),
                str(lease_id),
            )
            for name, holder, units, acquired, released, lease_id in data
        ]

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
        step = self._step(
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
        data = yield self._audited(step, name, "update", before=json.dumps(old))
        return _limit(data["limit"])

    def set_active(self, name: str, active: bool) -> Plan[Limit]:
        step = self._step(
            "set_active", "%s::text, %s::boolean, %s::text", name, active, self.process_id
        )
        data = yield self._audited(step, name, "enable" if active else "disable")
        return _limit(data["limit"])

    def reset_limit(self, name: str) -> Plan[int]:
        step = self._step("reset_limit", "%s::text, %s::text", name, self.process_id)
        data = yield self._audited(step, name, "reset")
        return int(data["revoked"])

    def delete_limit(self, name: str, force: bool) -> Plan[None]:
        step = self._step(
            "delete_limit", "%s::text, %s::boolean, %s::text", name, force, self.process_id
        )
        yield self._audited(step, name, "delete", extra={"force": force})

    def _audited(
        self,
        step: Call[Any],
        name: str,
        action: str,
        *,
        before: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Call[Any]:
        """The admin step's call, also recording the action in its transaction."""
        q = self.config.quoted_schema
        sql, params = audit.audited(
            q, step.sql, step.params, name, action, before=before, extra=extra
        )
        return Call(sql, params)

    def record_admin(self, name: str, action: str, changes: Mapping[str, Any]) -> Plan[AdminRecord]:
        """Record an admin action done outside the store's steps."""
        data = yield Call(*audit.record_call(self.config.quoted_schema, name, action, changes))
        return AdminRecord(name, action, float(data["at"]), current_actor(), data["changes"])

    def admin_history(self, name: str, count: int) -> Plan[list[AdminRecord]]:
        """The newest ``count`` records of a limit, newest first."""
        data = yield Call(*audit.history_call(self.config.quoted_schema, name, count))
        return audit.records_of(data)

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
        waiters = []
        position = 1
        for w in data["waiters"]:  # each ticket stands for ``wanted`` requests in a row
            waiters.append(
                Waiter(
                    w["ticket_id"],
                    w["occupy"],
                    w["holder"],
                    w["host"],
                    w["pid"],
                    utc(w["since"]),
                    position,
                    int(w["wanted"]),
                )
            )
            position += int(w["wanted"])
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

    # ------------------------------------------------------------- the hot path

    def payload(self, batch: Exchange) -> dict[str, Any]:
        """An exchange as the step function takes it, numbered once: its resends repeat it."""
        return {
            "process": self.process_id,
            "host": self.host,
            "pid": self.pid,
            "step": next(self._steps),
            "resend": False,
            "releases": list(batch.releases),
            "withdrawals": [
                {"ticket": w.ticket_id, "count": w.count, "timed_out_on": w.timed_out_on}
                for w in batch.withdrawals
            ],
            "asks": [
                {
                    "ticket": a.ticket_id,
                    "seq": a.seq,
                    "count": a.count,
                    "request": _request(a.request),
                }
                for a in batch.asks
            ],
            "requests": [_request(r) for r in batch.requests],
        }

    def exchange(self, batch: Exchange, payload: dict[str, Any]) -> Plan[Exchanged]:
        """One exchange step; a reply lost with its connection is asked for again.

        The step may have committed before its connection died: the batch is sent
        again, marked ``resend``, and the step function answers what the first attempt
        did instead of doing it twice (see ``sql/exchange.sql``).
        """
        sql = self._fn("exchange", "%s::jsonb")
        for delay in (*_RESEND_DELAYS, None):
            try:
                data = yield Call(sql, (json.dumps(payload, separators=(",", ":")),))
                break
            except StoreUnavailable as exc:
                if delay is None or isinstance(exc.__cause__, StepOverdue):
                    raise  # (past the step's deadline: a resend would run past it too)
                payload["resend"] = True
                if delay:
                    yield Sleep(delay)
        answer = _exchanged(data)
        done = {a.ticket_id for a in batch.asks}
        done.update(w.ticket_id for w in batch.withdrawals if w.count is None)
        done.update(r.request_id for r in batch.requests)
        done.update(g.ticket_id for g in answer.grants)
        self.waiting = (self.waiting - done) | set(answer.queued)
        return answer

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

    def forget_process(self) -> Plan[None]:
        """Give back every lease and queue place of this process (a normal exit)."""
        self.waiting = set()
        yield self._step("forget_process", "%s::text", self.process_id)


def wakes_in(result: Any) -> list[str]:
    """The ticket ids of this process that a step's result says to wake."""
    if isinstance(result, dict):
        wake = result.get("wake")
        if wake:
            return list(wake)
    return []
