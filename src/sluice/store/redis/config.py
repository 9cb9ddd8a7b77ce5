"""What a ``redis://`` URL says, the step scripts, the constants, and what redis-py's errors mean.

Nothing here talks to a server: :mod:`sluice.store.redis.plans` builds the
script calls, :mod:`sluice.store.redis.store` runs them.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import random
import re
from dataclasses import dataclass
from importlib import resources
from typing import ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sluice.errors import ConfigError, SluiceError, StoreError, StoreUnavailable
from sluice.store import redact_url

__all__ = [
    "ATTEMPTS",
    "CONFLICT_RETRIES",
    "CONNECT_TIMEOUT",
    "LISTEN_POLL",
    "POOL_TIMEOUT",
    "SCHEMA_VERSION",
    "STEPS",
    "PoolTimeout",
    "RedisConfig",
    "Scripts",
    "StepOverdue",
    "backoff",
    "translate",
]

SCHEMA_VERSION = 2
"""The layout of the keys this code writes, as the deployment's meta hash records it.

2: tickets wanting several grants, grants waiting to be claimed, stalled tickets
(see ``scripts/_lib.lua``). Keys written by version 1 lack the new fields, which read
as their defaults (a ticket wants one grant, a lease is claimed, nothing is stalled),
so a deployment is used in place; the first step of this version records 2.

The audit lists ``P:admin:NAME`` (``scripts/admin_record.lua``: admin actions on limit
NAME, newest first, the newest :data:`~sluice.store.audit.ADMIN_KEEP` kept) are new keys
beside the others, which no step reads: the layout version stays 2, and a deployment
used by an older Sluice simply has no audit record of the actions that version did."""

STEPS = (
    "admin_record",
    "create_limit",
    "delete_limit",
    "diagnose",
    "exchange",
    "forget_process",
    "get_limits",
    "held_spans",
    "inspect_limit",
    "renew",
    "reset_limit",
    "set_active",
    "update_limit",
)
"""The step scripts, ``scripts/<step>.lua``."""

ATTEMPTS = 3
"""Tries of an idempotent step before a connection error is reported."""

CONFLICT_RETRIES = 20
"""Tries of an update whose limit changed between reading and writing it."""

LISTEN_POLL = 5.0
"""Seconds the listener blocks per read (stopping it wakes it at once)."""

POOL_TIMEOUT = 30.0
"""Seconds a step waits for one of the process's ``pool_size`` connections to be free,
at most: in fact the store's step deadline (``SLUICE_STEP_TIMEOUT``), if shorter."""

CONNECT_TIMEOUT = 5.0
"""Seconds a connection may take to be made, at most (the step deadline, if shorter)."""

DEFAULT_POOL_SIZE = 4

# Run without _lib.lua: read-only, or (admin_record) touching no limit, lease or queue.
_STANDALONE = frozenset({"admin_record", "diagnose", "held_spans"})
_PREFIX = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_BACKOFF_CAP = 2.0  # seconds: the longest pause between reconnection attempts
_CONNECTION = (RedisConnectionError, RedisTimeoutError, OSError)


class PoolTimeout(RedisError):
    """Every connection of the process's pool stayed busy for :data:`POOL_TIMEOUT` seconds."""


class StepOverdue(PoolTimeout):
    """A step's deadline passed: it is not tried again (like a pool wait that timed out)."""


def backoff(attempt: int) -> float:
    """Seconds before reconnection attempt ``attempt`` (0-based): doubling, capped, jittered."""
    return float(min(_BACKOFF_CAP, 0.05 * 2.0**attempt) * random.uniform(0.5, 1.0))


class Scripts:
    """The step scripts' sources and SHA1s, read from the package once."""

    _sources: ClassVar[dict[str, str]] = {}
    _shas: ClassVar[dict[str, str]] = {}

    @classmethod
    def sha(cls, step: str) -> str:
        """The SHA1 a step's script is called by."""
        if not cls._shas:
            folder = resources.files("sluice.store.redis").joinpath("scripts")
            lib = folder.joinpath("_lib.lua").read_text()
            for name in STEPS:
                source = folder.joinpath(f"{name}.lua").read_text()
                if name not in _STANDALONE:
                    source = lib + "\n" + source
                cls._sources[name] = source
                cls._shas[name] = hashlib.sha1(source.encode()).hexdigest()
        return cls._shas[step]

    @classmethod
    def source(cls, step: str) -> str:
        """A step's script as the server runs it (``_lib.lua`` first, unless standalone)."""
        cls.sha(step)
        return cls._sources[step]


@functools.lru_cache(maxsize=4)
def _connection_options(scheme: str) -> frozenset[str]:
    """The query parameters redis-py takes for a connection of this URL scheme (those its
    URL parser converts, and the connection class's own keyword arguments)."""
    import redis.connection as connection

    kind = connection.SSLConnection if scheme == "rediss" else connection.Connection
    names = set(connection.URL_QUERY_ARGUMENT_PARSERS)
    for klass in kind.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names.update(inspect.signature(init).parameters)
    return frozenset(names - {"self", "args", "kwargs", "host", "port", "password", "username"})


@dataclass(frozen=True)
class RedisConfig:
    """What a ``redis://`` URL says: where the server is and which keys are ours."""

    url: str
    """The URL with its password masked, for messages."""
    connect_url: str
    """What redis-py connects with: the URL less Sluice's own query parameters."""
    prefix: str
    """The deployment's key prefix: every key starts with the hash tag ``{prefix}``."""
    pool_size: int = DEFAULT_POOL_SIZE
    """The most connections this process opens for steps (its wake-up listener has its own)."""

    @property
    def meta_key(self) -> str:
        """The deployment's meta hash; every key shares its hash tag."""
        return f"{{{self.prefix}}}:meta"

    def channel(self, process_id: str) -> str:
        """The pub/sub channel that wakes one process's waiters."""
        return f"{{{self.prefix}}}:wake:{process_id}"

    @classmethod
    def parse(cls, url: str) -> RedisConfig:
        """Split a store URL into where to connect and Sluice's prefix; ConfigError if bad."""
        masked = redact_url(url)
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises ValueError for a bad port
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {masked!r}: {exc}") from exc
        if not parts.hostname:
            raise ConfigError(
                f"invalid Redis URL {masked!r}: give a host, e.g. redis://127.0.0.1:6379/0"
            )
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefix = "sluice"
        raw_size = str(DEFAULT_POOL_SIZE)
        rest = []
        for name, value in query:
            if name == "prefix":
                prefix = value
            elif name == "pool_size":
                raw_size = value
            elif name in _connection_options(parts.scheme):
                rest.append((name, value))
            else:
                raise ConfigError(
                    f"unknown parameter {name!r} in Redis URL {masked!r}: Sluice's own are "
                    "prefix and pool_size; the others must be redis-py connection options "
                    "(e.g. socket_keepalive, health_check_interval, ssl_ca_certs)"
                )
        if not raw_size.isdigit() or not 1 <= int(raw_size) <= 100:
            raise ConfigError(
                f"invalid pool_size {raw_size!r} in Redis URL {masked!r}: use a whole number 1-100"
            )
        if not _PREFIX.match(prefix):
            raise ConfigError(
                f"invalid prefix {prefix!r} in Redis URL {masked!r}: use 1-64 letters, digits "
                "and ._:- (no braces)"
            )
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise ConfigError(
                f"invalid database {db!r} in Redis URL {masked!r}: use a number, e.g. /0"
            )
        connect = urlunsplit(parts._replace(query=urlencode(rest)))
        return cls(masked, connect, prefix, int(raw_size))


def translate(exc: Exception, url: str) -> SluiceError | None:
    """The Sluice error a redis-py error means (raise it ``from exc``); None if not redis-py's."""
    if isinstance(exc, PoolTimeout):
        return StoreUnavailable(f"Redis store {url}: {exc}")
    if isinstance(exc, _CONNECTION):
        return StoreUnavailable(
            f"Redis store {url} is unreachable: {exc}; check that the server is "
            "running and the URL is right"
        )
    if isinstance(exc, RedisError):
        return StoreError(f"Redis store {url} failed: {exc}")
    return None
