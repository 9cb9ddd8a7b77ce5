"""The Redis store: the same limits shared by every process on every host.

Each operation is one Lua script (``scripts/<step>.lua``, with the shared
``_lib.lua`` prepended), loaded once and called by SHA; a script is loaded
again after ``SCRIPT FLUSH`` or a server restart. All keys of a deployment
start with one hash tag, ``{<prefix>}``, so a Redis Cluster keeps them on one
shard and a multi-limit acquisition stays one atomic script. Time comes from
the server (``TIME`` inside the scripts), never from this host. Every acquire,
release and give-up of a process reaches the store as one
:meth:`RedisStore.exchange` step (``scripts/exchange.lua``), batched by the
process's :class:`~sluice.limits.line.Line`; the async front door runs the admin
steps on worker threads.

Connections: steps share a bounded pool of ``pool_size`` connections (URL
parameter, default 4); a step waits for a free one instead of opening more. The
wake-up listener holds one more connection of its own, outside the pool, for as
long as the store is open.

Deadlines: a step, its tries after a lost connection included, takes at most the
step deadline (``SLUICE_STEP_TIMEOUT``, :mod:`sluice.store.deadline`), then
raises StoreUnavailable: each connection's socket timeout is the deadline, a
connection is made within ``CONNECT_TIMEOUT`` seconds (or the deadline, if
shorter), a wait for a free pooled connection ends with the deadline, and no try
starts once it passed. A server that stops answering (paused, or cut off) costs
a step its deadline, never more.

Wake-ups travel by pub/sub: each process subscribes once, on its own channel
(:mod:`sluice.store.redis.listener`), and a script that hands a grant to another
process's ticket publishes the ticket's id to exactly that process, which asks
about the ticket in its next exchange and so claims the grant. Lease expiry is
the only crash detection: a killed holder's units come back once its lease TTL
runs out, and the waiter behind it is told when that is, so it looks again
right then.

Each limit's totals (grants, units, waits, timeouts, expired leases reclaimed)
are counted by the scripts whose step causes them, in a hash of its own next to
the limit's (``{<prefix>}:tot:<name>``), which lives and dies with the limit.

:class:`RedisStore` drives the plans of :mod:`sluice.store.redis.plans` over
redis-py.

URL: ``redis://[:password@]host[:port][/db][?prefix=sluice&pool_size=4]``
(``rediss://`` for TLS). Recommended server settings are in the README ("Redis store").
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.retry import Retry

from sluice import _fork
from sluice.errors import StoreError, StoreUnavailable
from sluice.limits.model import Limit, LimitChanges, LimitStatus, validate_name
from sluice.store.audit import AdminRecord, check_history_count
from sluice.store.base import (
    Exchange,
    Exchanged,
    HeldSpan,
    Renewal,
    StoreDiagnosis,
    WakeHandler,
)
from sluice.store.deadline import Deadline, step_timeout
from sluice.store.plans import Plan, run_plan
from sluice.store.redis import audit
from sluice.store.redis.config import (
    CONNECT_TIMEOUT,
    POOL_TIMEOUT,
    SCHEMA_VERSION,
    PoolTimeout,
    RedisConfig,
    Scripts,
    StepOverdue,
    translate,
)
from sluice.store.redis.listener import Listener
from sluice.store.redis.plans import Command, Engine, Script

__all__ = ["SCHEMA_VERSION", "RedisStore", "from_url"]

T = TypeVar("T")

_SUBSCRIBE_WAIT = 10.0  # seconds a first exchange that may queue waits for the subscription


def _client_options(process_id: str, deadline: float) -> dict[str, Any]:
    """What every connection is made with: no retries of its own, timeouts (the step
    deadline per command), a name."""
    return {
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": min(CONNECT_TIMEOUT, deadline),
        "socket_timeout": deadline,
        "socket_keepalive": True,
        "client_name": f"sluice:{process_id}",
    }


class _Pool(redis.BlockingConnectionPool):
    """A bounded pool: a step waits for a free connection, and says so if it waits too long.

    A connection handed to a step reads with the time the step has left (``left``) as
    its socket timeout, so no try outlasts the step's deadline.
    """

    left: Callable[[], float | None] = staticmethod(lambda: None)

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            conn = super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call, unused-ignore]
        except RedisConnectionError as exc:
            if "No connection available" not in str(exc):
                raise
            raise PoolTimeout(
                f"all {self.max_connections} connections of this process (pool_size) stayed "
                f"busy for {self.timeout:g} s; raise pool_size in the URL if many threads "
                "run admin steps at once, or check the server's latency"
            ) from exc
        sock = getattr(conn, "_sock", None)
        if sock is not None:
            left = self.left()
            with contextlib.suppress(OSError):
                sock.settimeout(conn.socket_timeout if left is None else max(left, 0.001))
        return conn


class RedisStore:
    """Limits, leases and FIFO queues in Redis keys; one Lua script per operation."""

    safety_interval = 30.0  # pub/sub pushes every wake-up; this re-check is a backstop

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.url = config.url
        self.engine = Engine(config)
        """This process's identity and state in the deployment, and every operation as a plan."""
        self._meta = config.meta_key
        self._translate = functools.partial(translate, url=self.url)
        self.step_timeout = step_timeout()
        """Seconds one step may take, its tries and reconnections included."""
        self._closed = False
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._listener: Listener | None = None
        self._steps = threading.local()  # .deadline: the step this thread runs now
        _fork.track(self, RedisStore._after_fork)

    def _after_fork(self) -> None:
        # A forked child is a new process: its own identity, connections and listener.
        self._client = None
        self._listener = None
        self._lock = threading.Lock()
        self.engine.after_fork()

    # ------------------------------------------------------------- plumbing

    @property
    def process_id(self) -> str:
        """This process's id in the deployment (its wake-up channel ends with it)."""
        return self.engine.process_id

    @property
    def closed(self) -> bool:
        """Whether close() has been called."""
        return self._closed

    @property
    def pool_size(self) -> int:
        """How many connections this process's steps share (the URL's pool_size)."""
        return self.config.pool_size

    def _connect(self, pool_size: int | None) -> redis.Redis:
        """A client: on the bounded step pool, or (None) on a connection of its own."""
        options = _client_options(self.process_id, self.step_timeout)
        if pool_size is None:
            return redis.Redis.from_url(self.config.connect_url, **options)
        pool = _Pool.from_url(
            self.config.connect_url,
            max_connections=pool_size,
            timeout=min(POOL_TIMEOUT, self.step_timeout),
            **options,
        )
        pool.left = self._left
        return redis.Redis(connection_pool=pool)

    def _left(self) -> float | None:
        """Seconds the step this thread runs has left (None: no step)."""
        deadline: Deadline | None = getattr(self._steps, "deadline", None)
        return None if deadline is None else deadline.left()

    @property
    def client(self) -> redis.Redis:
        """The client on this process's pool of ``pool_size`` connections (made on first use)."""
        if self._closed:
            raise StoreError(f"store {self.url} is closed")
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._connect(self.config.pool_size)
        return self._client

    def _execute(self, call: Script | Command) -> Any:
        deadline: Deadline | None = getattr(self._steps, "deadline", None)
        if deadline is not None and deadline.passed:  # no new try once the step's time is up
            raise StepOverdue(
                f"no answer within {deadline.seconds:g} s, the per-step deadline "
                "(SLUICE_STEP_TIMEOUT); check that the server is running and reachable"
            )
        client = self.client
        if isinstance(call, Command):
            return client.execute_command(call.name, *call.args)  # type: ignore[no-untyped-call, unused-ignore]
        sha = Scripts.sha(call.step)
        try:
            return client.evalsha(sha, 1, self._meta, *call.args)
        except NoScriptError:  # after SCRIPT FLUSH or a restart: load it again
            client.script_load(Scripts.source(call.step))
            return client.evalsha(sha, 1, self._meta, *call.args)

    def _drive(self, plan: Plan[T], deadline: Deadline | None = None) -> T:
        """Run a plan as one step, within the step deadline (or ``deadline``)."""
        if self._closed:
            raise StoreError(f"store {self.url} is closed")
        step = deadline or Deadline(self.step_timeout)
        self._steps.deadline = step
        try:
            return run_plan(plan, self._execute, self._translate)
        finally:
            self._steps.deadline = None

    @property
    def listening(self) -> bool:
        """Whether this process's wake-up subscription is in force."""
        listener = self._listener
        return listener is not None and listener.ready.is_set()

    def listen(self, within: float | None = None) -> None:
        """Subscribe to this process's wake-ups, before a step that may leave a ticket waiting
        (waiting for the subscription at most ``within`` seconds, or the step deadline)."""
        if self._listener is None:
            with self._lock:
                if self._listener is None:
                    self._listener = Listener(
                        self._connect(None),
                        lambda: self.client,
                        self.config.channel(self.process_id),
                        self.engine.deliver,
                        self.engine.wake_all,
                        self.url,
                    )
        wait = min(_SUBSCRIBE_WAIT, self.step_timeout if within is None else within)
        if not self._listener.ready.wait(timeout=wait):
            raise StoreUnavailable(
                f"Redis store {self.url}: could not subscribe to wake-ups within {wait:g} s; "
                "check that the server is reachable"
            )

    def set_wake_handler(self, handler: WakeHandler) -> None:
        self.engine.handler = handler

    # ------------------------------------------------------------- the Store protocol

    def now(self) -> float:
        return self._drive(self.engine.now())

    def create_limit(self, limit: Limit) -> Limit:
        return self._drive(self.engine.create_limit(limit))

    def ensure_limit(self, limit: Limit) -> Limit:
        return self._drive(self.engine.ensure_limit(limit))

    def get_limit(self, name: str) -> Limit:
        return self._drive(self.engine.get_limit(name))

    def list_limits(self) -> list[Limit]:
        return self._drive(self.engine.list_limits())

    def update_limit(self, name: str, changes: LimitChanges) -> Limit:
        return self._drive(audit.update(self.engine, name, changes))

    def set_active(self, name: str, active: bool) -> Limit:
        return self._drive(audit.set_active(self.engine, name, active))

    def reset_limit(self, name: str) -> int:
        return self._drive(audit.reset(self.engine, name))

    def delete_limit(self, name: str, force: bool = False) -> None:
        self._drive(audit.delete(self.engine, name, force))

    def record_admin(self, name: str, action: str, changes: Mapping[str, Any]) -> AdminRecord:
        return self._drive(audit.record(validate_name(name), action, changes))

    def admin_history(self, name: str, count: int = 100) -> list[AdminRecord]:
        name, count = validate_name(name), check_history_count(count)
        return self._drive(audit.history(self.config, name, count))

    def inspect_limit(self, name: str) -> LimitStatus:
        return self._drive(self.engine.inspect_limit(name))

    def held_spans(self, names: Sequence[str], since: float, until: float) -> list[HeldSpan]:
        return self._drive(self.engine.held_spans(names, since, until))

    def diagnose(self) -> StoreDiagnosis:
        """Read the schema version and expired leases; changes nothing."""
        return self._drive(self.engine.diagnose())

    def exchange(self, batch: Exchange) -> Exchanged:
        deadline = Deadline(self.step_timeout)
        if batch.asks or batch.requests:
            self.listen(deadline.left())  # before a ticket can wait: no wake-up may be missed
        return self._drive(self.engine.exchange(batch), deadline)

    def renew(self, lease_ids: Sequence[str], ticket_ids: Sequence[str]) -> Renewal:
        return self._drive(self.engine.renew(lease_ids, ticket_ids))

    # ------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Withdraw this process's leases and tickets, then close connections."""
        if self._closed:
            return
        if self._client is not None:
            with contextlib.suppress(StoreError):
                self._drive(self.engine.forget_process())
            if self._listener is not None:
                self._listener.stop()
            self._client.connection_pool.disconnect()
            self._client.close()
        self._closed = True
        self._client = None


def from_url(url: str) -> RedisStore:
    """Open the store of a ``redis://`` or ``rediss://`` URL."""
    return RedisStore(RedisConfig.parse(url))
