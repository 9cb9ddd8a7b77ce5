"""The PostgreSQL store without I/O: its URL, its SQL, and each operation as a plan.

Every store operation is a *plan*: a generator that yields :class:`Call` objects
(one SQL statement each, a step function of ``sql/``, run as its own
transaction) and receives each one's result, then returns the operation's
outcome. The sync store (:class:`~sluice.store.postgres.PostgresStore`) and
its asyncio twin drive the same plans over psycopg's ``Connection`` and
``AsyncConnection``: the decisions (in SQL) and their parsing (here) exist once.
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from sluice.errors import (
    ConfigError,
    InvalidRequest,
    LimitBusy,
    LimitExists,
    LimitNotFound,
    SluiceError,
    StoreError,
    StoreUnavailable,
)
from sluice.limits import gcra
from sluice.limits.model import Holder, Limit, LimitChanges, LimitStatus, LimitTotals, Waiter, utc
from sluice.store import redact_url
from sluice.store.base import AcquireRequest, Granted, Queued, Renewal, StoreDiagnosis

__all__ = [
    "DEFAULT_SCHEMA",
    "RETRY_SQLSTATES",
    "SCHEMA_VERSION",
    "STEPS",
    "Call",
    "Engine",
    "PgConfig",
    "Plan",
    "migration_sql",
    "parse_url",
    "translate",
]

T = TypeVar("T")

SCHEMA_VERSION = 2
"""The schema this code needs; ``sql/migrate_<NNN>.sql`` for each version up to it
(1: the tables; 2: the limits' totals)."""

DEFAULT_SCHEMA = "sluice"
STEPS = (
    "engine",
    "acquire",
    "release",
    "renew",
    "abandon",
    "define_limit",
    "get_limit",
    "list_limits",
    "update_limit",
    "set_active",
    "reset_limit",
    "delete_limit",
    "inspect_limit",
    "forget_process",
    "diagnose",
)
"""The files defining the step functions, installed (CREATE OR REPLACE) by each migration."""

RETRY_SQLSTATES = frozenset({"40001", "40P01"})
"""Serialization failures and deadlocks: the step rolled back whole and is retried."""

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_OWN_PARAMS = ("schema", "listen_url", "pool_size", "prepared")
_APP_NAME_MAX = 63


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class PgConfig:
    """A parsed ``postgresql://`` store URL."""

    url: str
    """The URL with its password masked, for messages."""
    conninfo: str
    """What psycopg connects with for steps: the URL less Sluice's own parameters."""
    listen_conninfo: str
    """What the wake-up listener connects with (``listen_url``, else ``conninfo``)."""
    schema: str
    pool_size: int
    application_name: str
    prepared: bool = True
    """Whether steps use server-side prepared statements (off for PgBouncer < 1.21)."""

    @property
    def quoted_schema(self) -> str:
        """The schema as an SQL identifier (validated: no quoting surprises)."""
        return f'"{self.schema}"'


def parse_url(url: str) -> PgConfig:
    """Split a store URL into connection info and Sluice's options; ConfigError if bad.

    Sluice's own query parameters: ``schema`` (default ``sluice``), ``listen_url``
    (a session-mode URL for LISTEN, when steps go through a transaction-mode
    pooler), ``pool_size`` (connections per process, default 4) and ``prepared``
    (``false``: no prepared statements). Every other parameter (``sslmode``,
    ``connect_timeout``, ``application_name`` ...) goes to libpq.
    """
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:
        raise ConfigError(f"invalid PostgreSQL URL {shown!r}: {exc}") from exc
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigError(f"invalid PostgreSQL URL {shown!r}: use postgresql://user@host/db")
    own = {k: v for k, v in query if k in _OWN_PARAMS}
    rest = [(k, v) for k, v in query if k not in _OWN_PARAMS]
    schema = own.get("schema", DEFAULT_SCHEMA)
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigError(
            f"invalid schema {schema!r} in PostgreSQL URL {shown!r}: use 1-63 lowercase "
            "letters, digits and _, not starting with a digit"
        )
    raw_size = own.get("pool_size", "4")
    if not raw_size.isdigit() or not 1 <= int(raw_size) <= 100:
        raise ConfigError(
            f"invalid pool_size {raw_size!r} in PostgreSQL URL {shown!r}: use a whole number 1-100"
        )
    prepared = own.get("prepared", "true").lower()
    if prepared not in ("true", "false"):
        raise ConfigError(
            f"invalid prepared {own['prepared']!r} in PostgreSQL URL {shown!r}: use true or false"
        )
    app = dict(rest).get("application_name") or f"sluice/{schema}"
    rest = [(k, v) for k, v in rest if k != "application_name"]
    # libpq decodes %XX but not "+": spaces (as in options=-c a=b) must stay %20.
    conninfo = urlunsplit(
        ("postgresql", parts.netloc, parts.path, urlencode(rest, quote_via=quote), "")
    )
    listen = own.get("listen_url")
    if listen is None:
        listen_conninfo = conninfo
    else:
        lparts = urlsplit(listen)
        if lparts.scheme.lower() not in ("postgresql", "postgres"):
            raise ConfigError(
                f"invalid listen_url {redact_url(listen)!r} in PostgreSQL URL {shown!r}: "
                "use a postgresql:// URL to a session-mode pooler or the server itself"
            )
        listen_conninfo = urlunsplit(("postgresql", *lparts[1:4], ""))
    return PgConfig(
        url=shown,
        conninfo=conninfo,
        listen_conninfo=listen_conninfo,
        schema=schema,
        pool_size=int(raw_size),
        application_name=app[:_APP_NAME_MAX],
        prepared=prepared == "true",
    )


# --------------------------------------------------------------------------- SQL


def _sql(name: str, schema: str) -> str:
    text = resources.files("sluice.store.postgres").joinpath(f"sql/{name}.sql").read_text()
    return text.replace("@schema@", schema)


def migration_sql(schema: str, current: int) -> list[str]:
    """The scripts that take a schema from version ``current`` (0: none) to SCHEMA_VERSION."""
    quoted = f'"{schema}"'
    scripts = [_sql(f"migrate_{v:03d}", quoted) for v in range(current + 1, SCHEMA_VERSION + 1)]
    scripts.extend(_sql(step, quoted) for step in STEPS)
    scripts.append(
        f"INSERT INTO {quoted}.meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}')"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    )
    return scripts


@dataclass(frozen=True)
class Call(Generic[T]):
    """One SQL statement (a step function call) and how to read its single value."""

    sql: str
    params: tuple[Any, ...] = ()


Plan = Generator[Call[Any], Any, T]
"""An operation: yields Calls, is sent each one's result, returns the outcome."""


# --------------------------------------------------------------------------- errors


def translate(exc: Exception, url: str) -> SluiceError:
    """A psycopg error as the Sluice error it means (raise it ``from exc``)."""
    import psycopg

    state = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    detail = diag.message_detail if diag is not None else None
    if state == "SL404":
        return LimitNotFound(json.loads(detail or "[]"))
    if state == "SL409":
        return LimitExists(detail or "")
    if state == "SL423":
        busy = json.loads(detail or "{}")
        return LimitBusy(busy.get("name", ""), int(busy.get("holders", 0)))
    if state == "SL400":
        return _invalid(json.loads(detail or "{}"))
    if isinstance(exc, psycopg.OperationalError):
        return StoreUnavailable(f"PostgreSQL store {url} is unreachable: {_first_line(exc)}")
    if state == "3F000" or state == "42P01" or state == "42883":
        return StoreError(
            f"PostgreSQL store {url}: the Sluice schema is missing or incomplete "
            f"({_first_line(exc)}); it is created on first use, which needs the CREATE "
            "privilege on the database or the schema"
        )
    if state == "42501":
        return StoreError(f"PostgreSQL store {url}: permission denied ({_first_line(exc)})")
    return StoreError(f"PostgreSQL store {url} failed: {_first_line(exc)}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _invalid(detail: dict[str, Any]) -> InvalidRequest:
    name = detail.get("name")
    if detail.get("rule") == "no_rate":
        return InvalidRequest(
            f"rate_limit() on limit {name!r}, which has no rate; "
            "give it one with update(rate=...) or use concurrency()"
        )
    bound, what, occupy = detail.get("bound"), detail.get("what"), detail.get("occupy")
    return InvalidRequest(
        f"occupy={occupy} can never be met by limit {name!r} ({what}={bound}); "
        f"ask for at most {bound}"
    )


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


def run_plan(plan: Plan[T], execute: Callable[[Call[Any]], Any]) -> T:
    """Drive a plan with a blocking ``execute`` (the sync store's loop, shared by tests)."""
    try:
        call = next(plan)
        while True:
            call = plan.send(execute(call))
    except StopIteration as stop:
        value: T = stop.value
        return value
