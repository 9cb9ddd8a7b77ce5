"""The Redis store: the same limits shared by every process on every host.

Each operation is one Lua script (``scripts/<step>.lua``, with the shared
``_lib.lua`` prepended), loaded once and called by SHA; redis-py reloads a
script transparently after ``SCRIPT FLUSH`` or a server restart. All keys of a
deployment start with one hash tag, ``{<prefix>}``, so a Redis Cluster keeps
them on one shard and a multi-limit acquisition stays one atomic script. Time
comes from the server (``TIME`` inside the scripts), never from this host.

Wake-ups travel by pub/sub: each process subscribes once, on its own channel,
and a script that hands units over publishes the granted ticket ids to exactly
the processes that own them. Lease expiry is the only crash detection: a
killed holder's units come back once its lease TTL runs out, and the waiter
behind it is told when that is, so it looks again right then.

Each limit's totals (grants, units, waits, timeouts, expired leases reclaimed)
are counted by the scripts whose step causes them, in a hash of its own next to
the limit's (``{<prefix>}:tot:<name>``), which lives and dies with the limit.

URL: ``redis://[:password@]host[:port][/db][?prefix=sluice]`` (``rediss://``
for TLS). Recommended server settings are in the README ("Redis store").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from sluice.errors import (
    InvalidRequest,
    LimitBusy,
    LimitExists,
    LimitNotFound,
    SluiceError,
    StoreError,
    StoreUnavailable,
)
from sluice.limits.model import Holder, Limit, LimitChanges, LimitStatus, LimitTotals, Waiter, utc
from sluice.store.base import (
    AcquireRequest,
    ClockOffset,
    Granted,
    Queued,
    Renewal,
    StoreDiagnosis,
    WakeHandler,
)
from sluice.store.redis.config import (
    ATTEMPTS,
    CONFLICT_RETRIES,
    SCHEMA_VERSION,
    RedisConfig,
    Scripts,
    backoff,
    translate,
)
from sluice.store.redis.listener import Listener

__all__ = ["SCHEMA_VERSION", "RedisAsyncStore", "RedisStore", "from_url"]

log = logging.getLogger("sluice")

_T = TypeVar("_T")


@dataclass(frozen=True)
class _Call(Generic[_T]):
    """One step to run and how to read its reply: the same for the sync and async twins."""

    step: str
    args: Sequence[object]
    finish: Callable[[dict[str, Any]], _T]
    attempts: int = ATTEMPTS
    resent: str | None = None  # appended to the arguments of a try after the first


class _Core:
    """What the sync and async stores share: identity, epoch, arguments and replies."""

    config: RedisConfig

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.url = config.url
        self._meta = config.meta_key
        self._epoch = ""
        self._handler: WakeHandler | None = None
        self._state_lock = threading.Lock()
        self._waiting: dict[str, Queued] = {}  # request id -> its last queued answer
        self._queued_in: dict[str, str] = {}  # request id -> epoch its ticket was queued in
        self._handed: dict[str, Granted] = {}  # ticket id -> grant its wake-up brought
        self._clock = ClockOffset()  # the store's clock against this host's
        self._failures: dict[str, int] = {}  # request id -> connection failures in a row
        self._owned: set[str] = set()  # request ids with a ticket or lease of ours
        self._new_identity()

    def _new_identity(self) -> None:
        self._pid = os.getpid()
        self._host = socket.gethostname()
        self.process_id = f"{self._host}:{self._pid}:{uuid.uuid4().hex[:12]}"

    # ------------------------------------------------------------- arguments

    def _argv(self, args: Sequence[object], epoch: str | None = None) -> list[Any]:
        return [self.process_id, self._epoch if epoch is None else epoch, *args]

    def _acquire_epoch(self, request: AcquireRequest) -> str:
        """The epoch a retry's seq belongs to: a seq from before lost data means nothing."""
        if request.seq is None:
            return self._epoch
        with self._state_lock:
            return self._queued_in.get(request.request_id, "")

    def _acquire_args(self, request: AcquireRequest) -> list[object]:
        fields = [
            request.request_id,
            ",".join(request.names),
            request.occupy,
            request.kind.value,
            request.holder,
            request.missing,
            "" if request.seq is None else request.seq,
            self._host,
            self._pid,
        ]
        return [json.dumps(fields, separators=(",", ":"))]

    # ------------------------------------------------------------- replies

    def _decode(self, raw: object) -> dict[str, Any]:
        text = raw.decode() if isinstance(raw, bytes) else raw
        if not isinstance(text, str):
            raise StoreError(f"Redis store {self.url} gave an unexpected reply: {raw!r}")
        reply: dict[str, Any] = json.loads(text)
        self._epoch = str(reply.get("epoch", self._epoch))
        if "now" in reply:
            self._clock.observe(float(reply["now"]), time.time())
        wake = reply.get("wake")
        if wake:
            self._deliver(wake)
        return reply

    def _deliver(self, message: dict[str, Any]) -> None:
        """Keep the grants a wake-up carries for their waiters, then wake them."""
        grants = message.get("g") or {}
        if grants:
            with self._state_lock:
                for ticket_id, (names, acquired, expires, ttl) in grants.items():
                    granted = Granted(
                        ticket_id,
                        tuple(n for n in str(names).split(",") if n),
                        float(acquired),
                        float(expires),
                        float(ttl),
                    )
                    self._handed[str(ticket_id)] = granted
        ids = [str(t) for t in message.get("w") or ()]
        if ids and self._handler is not None:
            self._handler(ids)

    def _collect_handed(self, request: AcquireRequest) -> Granted | None:
        """A grant a wake-up brought this waiter, if it is still fresh: no round trip."""
        if request.seq is None:
            return None
        with self._state_lock:
            granted = self._handed.pop(request.request_id, None)
            if granted is None or granted.expires_at is None or granted.lease_ttl is None:
                return None
            # Trusted for the first half of its TTL, on the store's clock as last seen
            # from here; a waiter that was away longer (paused, frozen) asks the store.
            store_now = self._clock.store_now()
            if granted.expires_at - store_now < granted.lease_ttl / 2:
                return None
            self._waiting.pop(request.request_id, None)
            self._queued_in.pop(request.request_id, None)
            self._failures.pop(request.request_id, None)
            self._owned.add(request.request_id)
        return granted

    @staticmethod
    def _raise_for(reply: dict[str, Any]) -> None:
        code = reply.get("error")
        if code is None:
            return
        if code == "not_found":
            raise LimitNotFound(reply["names"])
        if code == "exists":
            raise LimitExists(reply["name"])
        if code == "busy":
            raise LimitBusy(reply["name"], int(reply["holders"]))
        if code == "rate_without_rate":
            raise InvalidRequest(
                f"rate_limit() on limit {reply['name']!r}, which has no rate; "
                "give it one with update(rate=...) or use concurrency()"
            )
        if code == "occupy_too_big":
            bound = int(reply["bound"])
            raise InvalidRequest(
                f"occupy={reply.get('occupy', '?')} can never be met by limit {reply['name']!r} "
                f"({reply['what']}={bound}); ask for at most {bound}"
            )
        raise StoreError(f"Redis store refused the step: {code}")

    def _outcome(self, request: AcquireRequest, reply: dict[str, Any]) -> Granted | Queued:
        if reply.get("error") == "occupy_too_big":
            reply["occupy"] = request.occupy
        self._raise_for(reply)
        missing = tuple(reply.get("missing") or ())
        if reply.get("granted"):
            with self._state_lock:
                self._waiting.pop(request.request_id, None)
                self._queued_in.pop(request.request_id, None)
                self._failures.pop(request.request_id, None)
                if reply.get("lease_id") is None:
                    self._owned.discard(request.request_id)
                else:
                    self._owned.add(request.request_id)
            return Granted(
                reply.get("lease_id"),
                tuple(reply["names"]),
                float(reply["acquired_at"]),
                None if reply.get("expires_at") is None else float(reply["expires_at"]),
                None if reply.get("lease_ttl") is None else float(reply["lease_ttl"]),
                missing,
            )
        queued = Queued(
            request.request_id,
            int(reply["seq"]),
            str(reply["blocked_on"]),
            int(reply["position"]),
            None if reply.get("retry_in") is None else float(reply["retry_in"]),
            float(reply["lease_ttl"]),
            missing,
        )
        with self._state_lock:
            self._waiting[request.request_id] = queued
            self._queued_in[request.request_id] = str(reply["epoch"])
            self._failures.pop(request.request_id, None)
            self._owned.add(request.request_id)
        return queued

    def _still_waiting(self, request: AcquireRequest, exc: StoreUnavailable) -> Queued:
        """A waiter whose retry could not reach Redis keeps its place and tries again soon."""
        with self._state_lock:
            last = self._waiting.get(request.request_id)
            failures = self._failures.get(request.request_id, 0)
            self._failures[request.request_id] = failures + 1
        if last is None:
            raise exc
        log.warning("sluice: %s; waiter %s retries", exc, request.request_id)
        return Queued(
            request.request_id,
            last.seq,
            last.blocked_on,
            last.position,
            backoff(failures + 3),
            last.lease_ttl,
            last.missing,
        )

    def _forget(self, request_ids: Collection[str]) -> None:
        with self._state_lock:
            for request_id in request_ids:
                self._waiting.pop(request_id, None)
                self._queued_in.pop(request_id, None)
                self._handed.pop(request_id, None)
                self._failures.pop(request_id, None)
                self._owned.discard(request_id)

    def _wake_all(self) -> None:
        """After a lost subscription: every local waiter looks again (a wake-up may be lost)."""
        with self._state_lock:
            waiting = list(self._waiting)
        if waiting and self._handler is not None:
            self._handler(waiting)

    def _error(self, exc: Exception) -> SluiceError:
        error = translate(exc, self.url)
        assert error is not None  # called with redis-py errors only, which all mean something
        return error

    # ------------------------------------------------------------- shared conversions

    @staticmethod
    def _limit_args(limit: Limit) -> list[object]:
        return [
            limit.name,
            "" if limit.slots is None else limit.slots,
            "" if limit.rate is None else repr(float(limit.rate)),
            "" if limit.burst is None else limit.burst,
            "1" if limit.active else "0",
            repr(float(limit.lease_ttl)),
        ]

    @staticmethod
    def _limit(data: dict[str, Any]) -> Limit:
        return Limit(
            str(data["name"]),
            None if data.get("slots") is None else int(data["slots"]),
            None if data.get("rate") is None else float(data["rate"]),
            None if data.get("burst") is None else int(data["burst"]),
            bool(data["active"]),
            float(data["lease_ttl"]),
        )

    def _status(self, reply: dict[str, Any]) -> LimitStatus:
        holders = [
            Holder(
                str(h[0]),
                int(h[1]),
                str(h[2]),
                str(h[3]),
                int(h[4]),
                utc(float(h[5])),
                utc(float(h[6])),
            )
            for h in reply["holders"]
        ]
        waiters = [
            Waiter(str(w[0]), int(w[1]), str(w[2]), str(w[3]), int(w[4]), utc(float(w[5])), i + 1)
            for i, w in enumerate(reply["waiters"])
        ]
        token_in = reply.get("next_token_in")
        return LimitStatus(
            limit=self._limit(reply["limit"]),
            in_use=sum(h.occupy for h in holders),
            holders=holders,
            waiters=waiters,
            next_token_in=None if token_in is None else float(token_in),
            taken_at=utc(float(reply["now"])),
            totals=self._totals(reply.get("totals") or {}),
        )

    @staticmethod
    def _totals(data: dict[str, Any]) -> LimitTotals:
        """Totals as inspect_limit.lua sends them: numbers as strings."""
        return LimitTotals.from_store(
            int(data.get("grants", 0)),
            int(data.get("granted_units", 0)),
            int(data.get("timeouts", 0)),
            int(data.get("reclaimed", 0)),
            [int(n) for n in data.get("queued_waits") or ()],
            float(data.get("wait_seconds", 0)),
        )

    # ------------------------------------------------------------- calls shared by both twins

    def _create_call(self, limit: Limit, *, ensure: bool) -> _Call[Limit]:
        def finish(reply: dict[str, Any]) -> Limit:
            self._raise_for(reply)
            return self._limit(reply["limit"])

        # Creating again after a lost reply would say "exists": only ensure is resent.
        args = [*self._limit_args(limit), "1" if ensure else "0"]
        return _Call("create_limit", args, finish, ATTEMPTS if ensure else 1)

    def _get_call(self, name: str) -> _Call[Limit]:
        return _Call("get_limits", [name], lambda reply: self._found(name, reply)[0])

    def _versioned_call(self, name: str) -> _Call[tuple[Limit, int]]:
        """The limit and the version an update must find unchanged."""
        return _Call("get_limits", [name], lambda reply: self._found(name, reply))

    def _found(self, name: str, reply: dict[str, Any]) -> tuple[Limit, int]:
        if reply["missing"]:
            raise LimitNotFound([name])
        data = reply["limits"][0]
        return self._limit(data), int(data["version"])

    def _list_call(self) -> _Call[list[Limit]]:
        return _Call("get_limits", [], lambda reply: [self._limit(d) for d in reply["limits"]])

    def _update_call(
        self, name: str, changes: LimitChanges, current: Limit, version: int
    ) -> _Call[Limit | None]:
        """Write ``changes`` over ``current``; the call answers None if it changed meanwhile."""
        new = changes.apply(current)

        def finish(reply: dict[str, Any]) -> Limit | None:
            if reply.get("error") == "conflict":
                return None
            self._raise_for(reply)
            return self._limit(reply["limit"])

        args = [
            name,
            "" if new.slots is None else new.slots,
            "" if new.rate is None else repr(float(new.rate)),
            "" if new.burst is None else new.burst,
            repr(float(new.lease_ttl)),
            "1" if changes.touches_rate() else "0",
            version,
        ]
        return _Call("update_limit", args, finish)

    @staticmethod
    def _conflict(name: str) -> StoreError:
        return StoreError(f"limit {name!r} kept changing while being updated; try again")

    def _set_active_call(self, name: str, active: bool) -> _Call[Limit]:
        def finish(reply: dict[str, Any]) -> Limit:
            self._raise_for(reply)
            return self._limit(reply["limit"])

        return _Call("set_active", [name, "1" if active else "0"], finish)

    def _reset_call(self, name: str) -> _Call[int]:
        def finish(reply: dict[str, Any]) -> int:
            self._raise_for(reply)
            return int(reply["revoked"])

        return _Call("reset_limit", [name], finish, attempts=1)

    def _delete_call(self, name: str, force: bool) -> _Call[None]:
        return _Call("delete_limit", [name, "1" if force else "0"], self._raise_for, attempts=1)

    def _inspect_call(self, name: str) -> _Call[LimitStatus]:
        def finish(reply: dict[str, Any]) -> LimitStatus:
            self._raise_for(reply)
            return self._status(reply)

        return _Call("inspect_limit", [name], finish)

    def _renew_call(self, lease_ids: Sequence[str], ticket_ids: Sequence[str]) -> _Call[Renewal]:
        def finish(reply: dict[str, Any]) -> Renewal:
            lost_leases = frozenset(str(i) for i in reply["lost_leases"])
            lost_tickets = frozenset(str(i) for i in reply["lost_tickets"])
            self._forget(lost_leases | lost_tickets)
            expires = reply.get("expires") or {}
            return Renewal(
                lost_leases, lost_tickets, {str(k): float(v) for k, v in expires.items()}
            )

        return _Call("renew", [len(lease_ids), *lease_ids, *ticket_ids], finish)

    def _abandon_call(self, request_id: str, timed_out_on: str | None) -> _Call[None]:
        def finish(reply: dict[str, Any]) -> None:
            self._forget([request_id])

        # Marked when resent, so a timeout whose first try ran is not counted twice.
        args = ["" if timed_out_on is None else timed_out_on, 1, request_id]
        return _Call("abandon", args, finish, resent="resent")

    def _released(self, lease_id: str, reply: dict[str, Any], attempt: int) -> bool:
        self._forget([lease_id])
        # After a lost reply the first try may have released it: that counts.
        return bool(reply["found"][0]) or attempt > 0


class RedisStore(_Core):
    """Limits, leases and FIFO queues in Redis keys; one Lua script per operation."""

    safety_interval = 30.0  # pub/sub pushes every wake-up; this re-check is a backstop

    def __init__(self, config: RedisConfig) -> None:
        super().__init__(config)
        self._closed = False
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._listener: Listener | None = None

    # ------------------------------------------------------------- plumbing

    @property
    def client(self) -> redis.Redis:
        """The connection pool to the server (created on first use)."""
        if self._pid != os.getpid():
            self._after_fork()
        if self._closed:
            raise StoreError(f"store {self.url} is closed")
        if self._client is None:
            with self._lock:
                if self._client is None:
                    client = redis.Redis.from_url(
                        self.config.connect_url,
                        socket_connect_timeout=5.0,
                        socket_timeout=30.0,
                        socket_keepalive=True,
                        retry=Retry(NoBackoff(), 0),
                        client_name=f"sluice:{self.process_id}",
                    )
                    self._client = client
        return self._client

    def _after_fork(self) -> None:
        # A forked child is a new process: its own identity, connections and listener.
        self._client = None
        self._listener = None
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._waiting.clear()
        self._queued_in.clear()
        self._handed.clear()
        self._failures.clear()
        self._owned.clear()
        self._new_identity()

    def _listen(self) -> None:
        """Subscribe before the first request that may queue, so no wake-up is missed."""
        if self._pid != os.getpid():
            self._after_fork()
        if self._listener is None:
            with self._lock:
                if self._listener is None:
                    self._listener = Listener(
                        lambda: self.client,
                        self.config.channel(self.process_id),
                        self._deliver,
                        self._wake_all,
                        self.url,
                    )
        if not self._listener.ready.wait(timeout=10.0):
            raise StoreUnavailable(
                f"Redis store {self.url}: could not subscribe to wake-ups within 10 s; "
                "check that the server is reachable"
            )

    def _step(
        self,
        step: str,
        args: Sequence[object],
        *,
        attempts: int = ATTEMPTS,
        epoch: str | None = None,
        resent: str | None = None,
    ) -> dict[str, Any]:
        """Run one step script; idempotent steps are tried again after a connection error.

        A resent step has ``resent`` appended to its arguments, so it can tell.
        """
        client = self.client
        sha = Scripts.sha(step)
        for attempt in range(attempts):
            argv = self._argv(args, epoch)
            if resent is not None and attempt > 0:
                argv.append(resent)
            try:
                try:
                    raw = client.evalsha(sha, 1, self._meta, *argv)
                except NoScriptError:  # after SCRIPT FLUSH or a restart: load it again
                    client.script_load(Scripts.source(step))
                    raw = client.evalsha(sha, 1, self._meta, *argv)
            except RedisError as exc:
                error = self._error(exc)
                if not isinstance(error, StoreUnavailable) or attempt + 1 == attempts:
                    raise error from exc
                time.sleep(backoff(attempt))
                continue
            return self._decode(raw)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------- admin

    def now(self) -> float:
        try:
            seconds, micros = self.client.time()
        except RedisError as exc:
            raise self._error(exc) from exc
        return float(seconds) + float(micros) / 1e6

    def _do(self, call: _Call[_T]) -> _T:
        return call.finish(
            self._step(call.step, call.args, attempts=call.attempts, resent=call.resent)
        )

    def create_limit(self, limit: Limit) -> Limit:
        return self._do(self._create_call(limit, ensure=False))

    def ensure_limit(self, limit: Limit) -> Limit:
        return self._do(self._create_call(limit, ensure=True))

    def get_limit(self, name: str) -> Limit:
        return self._do(self._get_call(name))

    def list_limits(self) -> list[Limit]:
        return self._do(self._list_call())

    def update_limit(self, name: str, changes: LimitChanges) -> Limit:
        for _ in range(CONFLICT_RETRIES):
            current = self._do(self._versioned_call(name))
            updated = self._do(self._update_call(name, changes, *current))
            if updated is not None:
                return updated
        raise self._conflict(name)

    def set_active(self, name: str, active: bool) -> Limit:
        return self._do(self._set_active_call(name, active))

    def reset_limit(self, name: str) -> int:
        return self._do(self._reset_call(name))

    def delete_limit(self, name: str, force: bool = False) -> None:
        self._do(self._delete_call(name, force))

    def inspect_limit(self, name: str) -> LimitStatus:
        return self._do(self._inspect_call(name))

    def diagnose(self) -> StoreDiagnosis:
        """Read the schema version and expired leases; changes nothing."""
        client = self.client
        try:
            sha = Scripts.sha("diagnose")
            try:
                raw = client.evalsha(sha, 1, self._meta)
            except NoScriptError:
                client.script_load(Scripts.source("diagnose"))
                raw = client.evalsha(sha, 1, self._meta)
            server = client.info("server")
            persistence = client.info("persistence")
        except RedisError as exc:
            raise self._error(exc) from exc
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        reply = json.loads(text)
        schema = reply.get("schema")
        version = None if schema is None else int(schema)
        aof = "AOF on" if str(persistence.get("aof_enabled", 0)) == "1" else "AOF off"
        detail = (
            f"Redis {server.get('redis_version', '?')}, {aof}, "
            f"keys under {{{self.config.prefix}}}, {int(reply['limits'])} limits"
        )
        return StoreDiagnosis(
            "redis", detail, version, version == SCHEMA_VERSION, int(reply["expired_leases"])
        )

    # ------------------------------------------------------------- acquire

    def acquire(self, request: AcquireRequest) -> Granted | Queued:
        if self._pid != os.getpid():
            self._after_fork()
        handed = self._collect_handed(request)
        if handed is not None:
            return handed
        try:
            self._listen()
            reply = self._step(
                "acquire",
                self._acquire_args(request),
                epoch=self._acquire_epoch(request),
                resent="resent",
            )
        except StoreUnavailable as exc:
            if request.seq is None:
                raise
            return self._still_waiting(request, exc)
        return self._outcome(request, reply)

    # ------------------------------------------------------------- release & renew

    def release(self, lease_id: str) -> bool:
        for attempt in range(ATTEMPTS):
            try:
                reply = self._step("release", [lease_id], attempts=1)
            except StoreUnavailable:
                if attempt + 1 == ATTEMPTS:
                    raise
                time.sleep(backoff(attempt))
                continue
            return self._released(lease_id, reply, attempt)
        raise AssertionError("unreachable")

    def renew(self, lease_ids: Sequence[str], ticket_ids: Sequence[str]) -> Renewal:
        return self._do(self._renew_call(lease_ids, ticket_ids))

    def abandon(self, request_id: str, timed_out_on: str | None = None) -> None:
        self._do(self._abandon_call(request_id, timed_out_on))

    # ------------------------------------------------------------- lifecycle

    def async_store(self) -> RedisAsyncStore:
        """A coroutine twin on redis.asyncio, sharing this store's scripts and identity."""
        return RedisAsyncStore(self)

    @property
    def closed(self) -> bool:
        """Whether close() has been called."""
        return self._closed

    def set_wake_handler(self, handler: WakeHandler) -> None:
        self._handler = handler

    def close(self) -> None:
        """Withdraw this process's leases and tickets, then close connections."""
        if self._closed:
            return
        if self._pid == os.getpid() and self._client is not None:
            with self._state_lock:
                owned = sorted(self._owned)
            if owned:
                with contextlib.suppress(StoreError):
                    self._step("abandon", ["", len(owned), *owned], attempts=1)
            if self._listener is not None:
                self._listener.stop()
            self._client.close()
        self._closed = True
        self._client = None


class RedisAsyncStore:
    """The coroutine twin of :class:`RedisStore`: the same scripts over redis.asyncio.

    redis.asyncio connections belong to one event loop, so each loop that uses
    the store gets its own client; :meth:`aclose` closes the running loop's.
    """

    def __init__(self, store: RedisStore) -> None:
        self.sync = store
        self.url = store.url
        self.safety_interval = store.safety_interval
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
            weakref.WeakKeyDictionary()
        )

    def _client(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            store = self.sync
            client = aioredis.Redis.from_url(
                store.config.connect_url,
                socket_connect_timeout=5.0,
                socket_timeout=30.0,
                socket_keepalive=True,
                retry=AsyncRetry(NoBackoff(), 0),
                client_name=f"sluice:{store.process_id}",
            )
            self._clients[loop] = client
        return client

    async def _step(
        self,
        step: str,
        args: Sequence[object],
        *,
        attempts: int = ATTEMPTS,
        epoch: str | None = None,
        resent: str | None = None,
    ) -> dict[str, Any]:
        """The coroutine twin of RedisStore._step."""
        store = self.sync
        if store.closed:
            raise StoreError(f"store {self.url} is closed")
        client = self._client()
        sha = Scripts.sha(step)
        for attempt in range(attempts):
            argv = store._argv(args, epoch)
            if resent is not None and attempt > 0:
                argv.append(resent)
            try:
                try:
                    raw = await client.evalsha(sha, 1, store._meta, *argv)
                except NoScriptError:  # after SCRIPT FLUSH or a restart: load it again
                    await client.script_load(Scripts.source(step))
                    raw = await client.evalsha(sha, 1, store._meta, *argv)
            except RedisError as exc:
                error = store._error(exc)
                if not isinstance(error, StoreUnavailable) or attempt + 1 == attempts:
                    raise error from exc
                await asyncio.sleep(backoff(attempt))
                continue
            return store._decode(raw)
        raise AssertionError("unreachable")

    async def _off_loop(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    async def now(self) -> float:
        client = self._client()
        try:
            seconds, micros = await client.time()
        except RedisError as exc:
            raise self.sync._error(exc) from exc
        return float(seconds) + float(micros) / 1e6

    async def _do(self, call: _Call[_T]) -> _T:
        return call.finish(
            await self._step(call.step, call.args, attempts=call.attempts, resent=call.resent)
        )

    async def create_limit(self, limit: Limit) -> Limit:
        return await self._do(self.sync._create_call(limit, ensure=False))

    async def ensure_limit(self, limit: Limit) -> Limit:
        return await self._do(self.sync._create_call(limit, ensure=True))

    async def get_limit(self, name: str) -> Limit:
        return await self._do(self.sync._get_call(name))

    async def list_limits(self) -> list[Limit]:
        return await self._do(self.sync._list_call())

    async def update_limit(self, name: str, changes: LimitChanges) -> Limit:
        store = self.sync
        for _ in range(CONFLICT_RETRIES):
            current = await self._do(store._versioned_call(name))
            updated = await self._do(store._update_call(name, changes, *current))
            if updated is not None:
                return updated
        raise store._conflict(name)

    async def set_active(self, name: str, active: bool) -> Limit:
        return await self._do(self.sync._set_active_call(name, active))

    async def reset_limit(self, name: str) -> int:
        return await self._do(self.sync._reset_call(name))

    async def delete_limit(self, name: str, force: bool = False) -> None:
        await self._do(self.sync._delete_call(name, force))

    async def inspect_limit(self, name: str) -> LimitStatus:
        return await self._do(self.sync._inspect_call(name))

    async def acquire(self, request: AcquireRequest) -> Granted | Queued:
        store = self.sync
        handed = store._collect_handed(request)
        if handed is not None:
            return handed
        try:
            if store._listener is None or not store._listener.ready.is_set():
                await self._off_loop(store._listen)
            reply = await self._step(
                "acquire",
                store._acquire_args(request),
                epoch=store._acquire_epoch(request),
                resent="resent",
            )
        except StoreUnavailable as exc:
            if request.seq is None:
                raise
            return store._still_waiting(request, exc)
        return store._outcome(request, reply)

    async def release(self, lease_id: str) -> bool:
        for attempt in range(ATTEMPTS):
            try:
                reply = await self._step("release", [lease_id], attempts=1)
            except StoreUnavailable:
                if attempt + 1 == ATTEMPTS:
                    raise
                await asyncio.sleep(backoff(attempt))
                continue
            return self.sync._released(lease_id, reply, attempt)
        raise AssertionError("unreachable")

    async def abandon(self, request_id: str, timed_out_on: str | None = None) -> None:
        await self._do(self.sync._abandon_call(request_id, timed_out_on))

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
