"""What a ``postgresql://`` URL says, the SQL files, and what the driver's errors mean.

Nothing here does I/O: :mod:`sluice.store.postgres.plans` builds the calls,
:mod:`sluice.store.postgres.store` runs them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any
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
from sluice.store import redact_url

__all__ = [
    "DEFAULT_SCHEMA",
    "RETRY_SQLSTATES",
    "SCHEMA_VERSION",
    "STEPS",
    "PgConfig",
    "StepOverdue",
    "migration_sql",
    "parse_url",
    "refusal",
    "translate",
]

SCHEMA_VERSION = 6
"""The schema this code needs; ``sql/migrate_<NNN>.sql`` for each version up to it
(1: the tables; 2: the limits' totals; 3: the exchange protocol; 4: indexes that the
exchange step's generic plans can use; 5: the record of held units; 6: the audit record
of admin actions)."""

DEFAULT_SCHEMA = "sluice"


class StepOverdue(Exception):
    """A step's deadline passed (what it was doing): the cause of its StoreUnavailable,
    which a plan does not try again (a resend could only run past the deadline)."""


STEPS = (
    "engine",
    "exchange",
    "renew",
    "define_limit",
    "get_limit",
    "list_limits",
    "held_spans",
    "update_limit",
    "set_active",
    "reset_limit",
    "delete_limit",
    "inspect_limit",
    "forget_process",
    "diagnose",
    "admin",
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
    connect_timeout: float | None = None
    """The URL's ``connect_timeout`` (libpq's), if it gives one."""

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
        connect_timeout=_seconds(dict(rest).get("connect_timeout")),
    )


def _seconds(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None  # libpq says what is wrong with it


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


def refusal(detail: dict[str, Any]) -> SluiceError:
    """The error of a request or ask an exchange refused, from its ``refused`` entry."""
    if detail.get("error") == "not_found":
        return LimitNotFound(detail.get("names") or [])
    return _invalid(detail)


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
