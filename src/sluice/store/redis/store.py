"""The Redis store: the same limits shared by every process on every host.

Each operation is one Lua script (``scripts/<step>.lua``, with the shared
``_lib.lua`` prepended), loaded once and called by SHA; a script is loaded
again after ``SCRIPT FLUSH`` or a server restart. All keys of a deployment
start with one hash tag, ``{<prefix>}``, so a Redis Cluster keeps them on one
shard and a multi-limit acquisition stays one atomic script. Time comes from
the server (``TIME`` inside the scripts), never from this host.

Wake-ups travel by pub/sub: each process subscribes once, on its own channel
(:mod:`sluice.store.redis.listener`), and a script that hands units over
publishes the granted ticket ids to exactly the processes that own them. Lease
expiry is the only crash detection: a killed holder's units come back once its
lease TTL runs out, and the waiter behind it is told when that is, so it looks
again right then.

Each limit's totals (grants, units, waits, timeouts, expired leases reclaimed)
are counted by the scripts whose step causes them, in a hash of its own next to
the limit's (``{<prefix>}:tot:<name>``), which lives and dies with the limit.

:class:`RedisStore` drives the plans of :mod:`sluice.store.redis.plans` over
redis-py; :class:`RedisAsyncStore` drives the same plans over redis.asyncio.

URL: ``redis://[:password@]host[:port][/db][?prefix=sluice]`` (``rediss://``
for TLS). Recommended server settings are in the README ("Redis store").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import weakref
from collections.abc import Sequence
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from sluice import _fork
from sluice.errors import StoreError, StoreUnavailable
from sluice.limits.model import Limit, LimitChanges, LimitStatus
from sluice.store.base import (
    AcquireRequest,
    Granted,
    Queued,
    Renewal,
    StoreDiagnosis,
    WakeHandler,
)
from sluice.store.plans import Plan, run_plan, run_plan_async
from sluice.store.redis.config import SCHEMA_VERSION, RedisConfig, Scripts, translate
from sluice.store.redis.listener import Listener
from sluice.store.redis.plans import Command, Engine, Script

__all__ = ["SCHEMA_VERSION", "RedisAsyncStore", "RedisStore", "from_url"]

T = TypeVar("T")

_SUBSCRIBE_WAIT = 10.0  # seconds a first acquire waits for the wake-up subscription


def _client_options(process_id: str) -> dict[str, Any]:
    """What both drivers' clients are created with: no retries of their own, a name."""
    return {
        "socket_connect_timeout": 5.0,
        "socket_timeout": 30.0,
        "socket_keepalive": True,
        "client_name": f"sluice:{process_id}",
    }


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
        self._closed = False
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._listener: Listener | None = None
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
    def client(self) -> redis.Redis:
        """The connection pool to the server (created on first use)."""
        if self._closed:
            raise StoreError(f"store {self.url} is closed")
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = redis.Redis.from_url(
                        self.config.connect_url,
                        retry=Retry(NoBackoff(), 0),
                        **_client_options(self.process_id),
                    )
        return self._client

    def _execute(self, call: Script | Command) -> Any:
        client = self.client
        if isinstance(call, Command):
            return client.execute_command(call.name, *call.args)  # type: ignore[no-untyped-call, unused-ignore]
        sha = Scripts.sha(call.step)
        try:
            return client.evalsha(sha, 1, self._meta, *call.args)
        except NoScriptError:  # after SCRIPT FLUSH or a restart: load it again
            client.script_load(Scripts.source(call.step))
            return client.evalsha(sha, 1, self._meta, *call.args)

    def _drive(self, plan: Plan[T]) -> T:
        if self._closed:
            raise StoreError(f"store {self.url} is closed")
        return run_plan(plan, self._execute, self._translate)

    @property
    def listening(self) -> bool:
        """Whether this process's wake-up subscription is in force."""
        listener = self._listener
        return listener is not None and listener.ready.is_set()

    def listen(self) -> None:
        """Subscribe to this process's wake-ups, before a request that may queue."""
        if self._listener is None:
            with self._lock:
                if self._listener is None:
                    self._listener = Listener(
                        lambda: self.client,
                        self.config.channel(self.process_id),
                        self.engine.deliver,
                        self.engine.wake_all,
                        self.url,
                    )
        if not self._listener.ready.wait(timeout=_SUBSCRIBE_WAIT):
            raise StoreUnavailable(
                f"Redis store {self.url}: could not subscribe to wake-ups within 10 s; "
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
        return self._drive(self.engine.update_limit(name, changes))

    def set_active(self, name: str, active: bool) -> Limit:
        return self._drive(self.engine.set_active(name, active))

    def reset_limit(self, name: str) -> int:
        return self._drive(self.engine.reset_limit(name))

    def delete_limit(self, name: str, force: bool = False) -> None:
        self._drive(self.engine.delete_limit(name, force))

    def inspect_limit(self, name: str) -> LimitStatus:
        return self._drive(self.engine.inspect_limit(name))

    def diagnose(self) -> StoreDiagnosis:
        """Read the schema version and expired leases; changes nothing."""
        return self._drive(self.engine.diagnose())

    def acquire(self, request: AcquireRequest) -> Granted | Queued:
        handed = self.engine.collect_handed(request)
        if handed is not None:
            return handed
        self.listen()
        return self._drive(self.engine.acquire(request))

    def release(self, lease_id: str) -> bool:
        return self._drive(self.engine.release(lease_id))

    def renew(self, lease_ids: Sequence[str], ticket_ids: Sequence[str]) -> Renewal:
        return self._drive(self.engine.renew(lease_ids, ticket_ids))

    def abandon(self, request_id: str, timed_out_on: str | None = None) -> None:
        self._drive(self.engine.abandon(request_id, timed_out_on))

    # ------------------------------------------------------------- lifecycle

    def async_store(self) -> RedisAsyncStore:
        """A coroutine twin on redis.asyncio, sharing this store's scripts and identity."""
        return RedisAsyncStore(self)

    def close(self) -> None:
        """Withdraw this process's leases and tickets, then close connections."""
        if self._closed:
            return
        if self._client is not None:
            with contextlib.suppress(StoreError):
                self._drive(self.engine.forget_process())
            if self._listener is not None:
                self._listener.stop()
            self._client.close()
        self._closed = True
        self._client = None


class RedisAsyncStore:
    """The coroutine twin of :class:`RedisStore`: the same plans over redis.asyncio.

    redis.asyncio connections belong to one event loop, so each loop that uses
    the store gets its own client; :meth:`aclose` closes the running loop's.
    """

    def __init__(self, store: RedisStore) -> None:
        self.sync = store
        self.url = store.url
        self.safety_interval = store.safety_interval
        self.engine = store.engine
        self._meta = store.config.meta_key
        self._translate = functools.partial(translate, url=self.url)
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
            weakref.WeakKeyDictionary()
        )

    def _client(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = aioredis.Redis.from_url(
                self.sync.config.connect_url,
                retry=AsyncRetry(NoBackoff(), 0),
                **_client_options(self.sync.process_id),
            )
            self._clients[loop] = client
        return client

    async def _execute(self, call: Script | Command) -> Any:
        client = self._client()
        if isinstance(call, Command):
            return await client.execute_command(call.name, *call.args)  # type: ignore[no-untyped-call, unused-ignore]
        sha = Scripts.sha(call.step)
        try:
            return await client.evalsha(sha, 1, self._meta, *call.args)
        except NoScriptError:  # after SCRIPT FLUSH or a restart: load it again
            await client.script_load(Scripts.source(call.step))
            return await client.evalsha(sha, 1, self._meta, *call.args)

    async def _drive(self, plan: Plan[T]) -> T:
        if self.sync.closed:
            raise StoreError(f"store {self.url} is closed")
        return await run_plan_async(plan, self._execute, self._translate)

    async def now(self) -> float:
        return await self._drive(self.engine.now())

    async def create_limit(self, limit: Limit) -> Limit:
        return await self._drive(self.engine.create_limit(limit))

    async def ensure_limit(self, limit: Limit) -> Limit:
        return await self._drive(self.engine.ensure_limit(limit))

    async def get_limit(self, name: str) -> Limit:
        return await self._drive(self.engine.get_limit(name))

    async def list_limits(self) -> list[Limit]:
        return await self._drive(self.engine.list_limits())

    async def update_limit(self, name: str, changes: LimitChanges) -> Limit:
        return await self._drive(self.engine.update_limit(name, changes))

    async def set_active(self, name: str, active: bool) -> Limit:
        return await self._drive(self.engine.set_active(name, active))

    async def reset_limit(self, name: str) -> int:
        return await self._drive(self.engine.reset_limit(name))

    async def delete_limit(self, name: str, force: bool = False) -> None:
        await self._drive(self.engine.delete_limit(name, force))

    async def inspect_limit(self, name: str) -> LimitStatus:
        return await self._drive(self.engine.inspect_limit(name))

    async def acquire(self, request: AcquireRequest) -> Granted | Queued:
        handed = self.engine.collect_handed(request)
        if handed is not None:
            return handed
        if not self.sync.listening:
            await asyncio.get_running_loop().run_in_executor(None, self.sync.listen)
        return await self._drive(self.engine.acquire(request))

    async def release(self, lease_id: str) -> bool:
        return await self._drive(self.engine.release(lease_id))

    async def abandon(self, request_id: str, timed_out_on: str | None = None) -> None:
        await self._drive(self.engine.abandon(request_id, timed_out_on))

    async def aclose(self) -> None:
        """Close the running event loop's connections (others reconnect on next use)."""
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            client = self._clients.pop(loop, None)
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()


def from_url(url: str) -> RedisStore:
    """Open the store of a ``redis://`` or ``rediss://`` URL."""
    return RedisStore(RedisConfig.parse(url))
