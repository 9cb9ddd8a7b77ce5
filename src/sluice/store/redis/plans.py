"""The Redis store's operations as plans: no I/O, driven by a sync and an async driver.

Every store operation is a plan (:mod:`sluice.store.plans`): a generator that
yields :class:`Script` calls (one step script each, run by ``EVALSHA``),
:class:`Command` calls (``TIME``, ``INFO``) and :class:`~sluice.store.plans.Sleep`
pauses, and is sent each call's reply. A driver throws the Sluice error a
failed call means into the plan at its ``yield``, so trying an idempotent step
again after a lost connection (marked "resent", so the script can tell),
reading replies, and this process's client-side state (its identity, the
deployment's epoch, its tickets, leases and handed-over grants, the store's
clock) exist once, in :class:`Engine`, for
:class:`~sluice.store.redis.store.RedisStore` and its asyncio twin.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sluice.errors import (
    InvalidRequest,
    LimitBusy,
    LimitExists,
    LimitNotFound,
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
from sluice.store.plans import Plan, Sleep
from sluice.store.redis.config import (
    ATTEMPTS,
    CONFLICT_RETRIES,
    SCHEMA_VERSION,
    RedisConfig,
    backoff,
)

__all__ = ["Command", "Engine", "Script"]

_RESENT = "resent"  # the last argument of a step sent again after a lost reply


@dataclass(frozen=True)
class Script:
    """One step script, run by ``EVALSHA`` on the deployment's meta key with these arguments."""

    step: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Command:
    """One plain Redis command, its reply parsed as redis-py parses that command's."""

    name: str
    args: tuple[Any, ...] = ()


# --------------------------------------------------------------------------- replies


def _limit_args(limit: Limit) -> list[object]:
    return [
        limit.name,
        "" if limit.slots is None else limit.slots,
        "" if limit.rate is None else repr(float(limit.rate)),
        "" if limit.burst is None else limit.burst,
        "1" if limit.active else "0",
        repr(float(limit.lease_ttl)),
    ]


def _limit(data: dict[str, Any]) -> Limit:
    return Limit(
        str(data["name"]),
        None if data.get("slots") is None else int(data["slots"]),
        None if data.get("rate") is None else float(data["rate"]),
        None if data.get("burst") is None else int(data["burst"]),
        bool(data["active"]),
        float(data["lease_ttl"]),
    )


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


def _status(reply: dict[str, Any]) -> LimitStatus:
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
        limit=_limit(reply["limit"]),
        in_use=sum(h.occupy for h in holders),
        holders=holders,
        waiters=waiters,
        next_token_in=None if token_in is None else float(token_in),
        taken_at=utc(float(reply["now"])),
        totals=_totals(reply.get("totals") or {}),
    )


def _raise_for(reply: dict[str, Any]) -> None:
    """Raise the error a script's reply reports, if any."""
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


def _diagnosis(
    raw: object, server: dict[str, Any], persistence: dict[str, Any], prefix: str
) -> StoreDiagnosis:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    reply = json.loads(text)
    schema = reply.get("schema")
    version = None if schema is None else int(schema)
    aof = "AOF on" if str(persistence.get("aof_enabled", 0)) == "1" else "AOF off"
    detail = (
        f"Redis {server.get('redis_version', '?')}, {aof}, "
        f"keys under {{{prefix}}}, {int(reply['limits'])} limits"
    )
    return StoreDiagnosis(
        "redis", detail, version, version == SCHEMA_VERSION, int(reply["expired_leases"])
    )


# --------------------------------------------------------------------------- the engine


class Engine:
    """This process's identity and client-side state in one deployment, and every operation."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.url = config.url
        self.epoch = ""
        """The deployment's data epoch as last seen: a new one means its data was lost."""
        self.handler: WakeHandler | None = None
        """Where this process's wake-ups (ticket ids) go."""
        self.clock = ClockOffset()
        """The store's clock against this host's."""
        self._start()

    def _start(self) -> None:
        self._lock = threading.Lock()
        self.waiting: dict[str, Queued] = {}
        """Request id -> its last queued answer: this process's waiters."""
        self.queued_in: dict[str, str] = {}
        """Request id -> the epoch its ticket was queued in."""
        self.handed: dict[str, Granted] = {}
        """Ticket id -> the grant its wake-up brought."""
        self.owned: set[str] = set()
        """Request ids with a ticket or lease of this process."""
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.process_id = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:12]}"
        """This process's id in the deployment (its wake-up channel ends with it)."""

    def after_fork(self) -> None:
        """In a forked child: a new identity, owning none of the parent's tickets or leases."""
        self._start()

    # ------------------------------------------------------------- steps

    def _tries(
        self,
        step: str,
        args: Sequence[object],
        *,
        attempts: int = ATTEMPTS,
        epoch: str | None = None,
        marked: bool = False,
        resent: bool = False,
    ) -> Plan[tuple[dict[str, Any], int]]:
        """Run one step script, again after a lost connection, up to ``attempts`` times.

        With ``marked``, the tries after the first carry the resent marker as
        their last argument (every try does if ``resent``: sent before, reply
        lost), so the script can tell. Returns the decoded reply and which try
        (0-based) gave it.
        """
        for attempt in range(attempts):
            argv = [self.process_id, self.epoch if epoch is None else epoch, *args]
            if marked and (resent or attempt > 0):
                argv.append(_RESENT)
            try:
                raw = yield Script(step, tuple(argv))
            except StoreUnavailable:
                if attempt + 1 == attempts:
                    raise
                yield Sleep(backoff(attempt))
                continue
            return self._decode(raw), attempt
        raise AssertionError("unreachable")

    def _step(
        self,
        step: str,
        args: Sequence[object],
        *,
        attempts: int = ATTEMPTS,
        epoch: str | None = None,
        marked: bool = False,
        resent: bool = False,
    ) -> Plan[dict[str, Any]]:
        reply, _ = yield from self._tries(
            step, args, attempts=attempts, epoch=epoch, marked=marked, resent=resent
        )
        return reply

    # ------------------------------------------------------------- replies and state

    def _decode(self, raw: object) -> dict[str, Any]:
        text = raw.decode() if isinstance(raw, bytes) else raw
        if not isinstance(text, str):
            raise StoreError(f"Redis store {self.url} gave an unexpected reply: {raw!r}")
        reply: dict[str, Any] = json.loads(text)
        self.epoch = str(reply.get("epoch", self.epoch))
        if "now" in reply:
            self.clock.observe(float(reply["now"]), time.time())
        wake = reply.get("wake")
        if wake:
            self.deliver(wake)
        return reply

    def deliver(self, message: dict[str, Any]) -> None:
        """Keep the grants a wake-up carries for their waiters, then wake them."""
        grants = message.get("g") or {}
        if grants:
            with self._lock:
                for ticket_id, (names, acquired, expires, ttl) in grants.items():
                    granted = Granted(
                        ticket_id,
                        tuple(n for n in str(names).split(",") if n),
                        float(acquired),
                        float(expires),
                        float(ttl),
                    )
                    self.handed[str(ticket_id)] = granted
        ids = [str(t) for t in message.get("w") or ()]
        if ids and self.handler is not None:
            self.handler(ids)

    def wake_all(self) -> None:
        """After a lost subscription: every local waiter looks again (a wake-up may be lost)."""
        with self._lock:
            waiting = list(self.waiting)
        if waiting and self.handler is not None:
            self.handler(waiting)

    def collect_handed(self, request: AcquireRequest) -> Granted | None:
        """A grant a wake-up brought this waiter, if it is still fresh: no round trip."""
        if request.seq is None:
            return None
        with self._lock:
            granted = self.handed.pop(request.request_id, None)
            if granted is None or granted.expires_at is None or granted.lease_ttl is None:
                return None
            # Trusted for the first half of its TTL, on the store's clock as last seen
            # from here; a waiter that was away longer (paused, frozen) asks the store.
            store_now = self.clock.store_now()
            if granted.expires_at - store_now < granted.lease_ttl / 2:
                return None
            self.waiting.pop(request.request_id, None)
            self.queued_in.pop(request.request_id, None)
            self.owned.add(request.request_id)
        return granted

    def _outcome(self, request: AcquireRequest, reply: dict[str, Any]) -> Granted | Queued:
        if reply.get("error") == "occupy_too_big":
            reply["occupy"] = request.occupy
        _raise_for(reply)
        missing = tuple(reply.get("missing") or ())
        if reply.get("granted"):
            with self._lock:
                self.waiting.pop(request.request_id, None)
                self.queued_in.pop(request.request_id, None)
                if reply.get("lease_id") is None:
                    self.owned.discard(request.request_id)
                else:
                    self.owned.add(request.request_id)
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
        with self._lock:
            self.waiting[request.request_id] = queued
            self.queued_in[request.request_id] = str(reply["epoch"])
            self.owned.add(request.request_id)
        return queued

    def _forget(self, request_ids: Collection[str]) -> None:
        with self._lock:
            for request_id in request_ids:
                self.waiting.pop(request_id, None)
                self.queued_in.pop(request_id, None)
                self.handed.pop(request_id, None)
                self.owned.discard(request_id)

    # ------------------------------------------------------------- reads

    def now(self) -> Plan[float]:
        """The server's clock, in seconds since the epoch."""
        seconds, micros = yield Command("TIME")
        return float(seconds) + float(micros) / 1e6

    def get_limit(self, name: str) -> Plan[Limit]:
        """The named limit."""
        limit, _ = yield from self._versioned(name)
        return limit

    def _versioned(self, name: str) -> Plan[tuple[Limit, int]]:
        """The limit and the version an update must find unchanged."""
        reply = yield from self._step("get_limits", [name])
        if reply["missing"]:
            raise LimitNotFound([name])
        data = reply["limits"][0]
        return _limit(data), int(data["version"])

    def list_limits(self) -> Plan[list[Limit]]:
        """Every limit, sorted by name."""
        reply = yield from self._step("get_limits", [])
        return [_limit(d) for d in reply["limits"]]

    def inspect_limit(self, name: str) -> Plan[LimitStatus]:
        """The limit with its holders, waiters, next token time and totals."""
        reply = yield from self._step("inspect_limit", [name])
        _raise_for(reply)
        return _status(reply)

    def diagnose(self) -> Plan[StoreDiagnosis]:
        """The schema version, expired leases and server facts; changes nothing."""
        raw = yield Script("diagnose")
        server = yield Command("INFO", ("server",))
        persistence = yield Command("INFO", ("persistence",))
        return _diagnosis(raw, server, persistence, self.config.prefix)

    # ------------------------------------------------------------- admin

    def create_limit(self, limit: Limit) -> Plan[Limit]:
        """Create a limit (LimitExists if the name is taken)."""
        return self._define(limit, ensure=False)

    def ensure_limit(self, limit: Limit) -> Plan[Limit]:
        """Create a limit unless one has its name; the stored limit either way."""
        return self._define(limit, ensure=True)

    def _define(self, limit: Limit, *, ensure: bool) -> Plan[Limit]:
        # Creating again after a lost reply would say "exists": only ensure is resent.
        args = [*_limit_args(limit), "1" if ensure else "0"]
        reply = yield from self._step("create_limit", args, attempts=ATTEMPTS if ensure else 1)
        _raise_for(reply)
        return _limit(reply["limit"])

    def update_limit(self, name: str, changes: LimitChanges) -> Plan[Limit]:
        """Change a limit's fields in place, again if it changed between reading and writing."""
        for _ in range(CONFLICT_RETRIES):
            current, version = yield from self._versioned(name)
            new = changes.apply(current)
            args = [
                name,
                "" if new.slots is None else new.slots,
                "" if new.rate is None else repr(float(new.rate)),
                "" if new.burst is None else new.burst,
                repr(float(new.lease_ttl)),
                "1" if changes.touches_rate() else "0",
                version,
            ]
            reply = yield from self._step("update_limit", args)
            if reply.get("error") != "conflict":
                _raise_for(reply)
                return _limit(reply["limit"])
        raise StoreError(f"limit {name!r} kept changing while being updated; try again")

    def set_active(self, name: str, active: bool) -> Plan[Limit]:
        """Enable or disable a limit."""
        reply = yield from self._step("set_active", [name, "1" if active else "0"])
        _raise_for(reply)
        return _limit(reply["limit"])

    def reset_limit(self, name: str) -> Plan[int]:
        """Revoke every lease of a limit and refill its bucket; how many were revoked."""
        reply = yield from self._step("reset_limit", [name], attempts=1)
        _raise_for(reply)
        return int(reply["revoked"])

    def delete_limit(self, name: str, force: bool) -> Plan[None]:
        """Delete a limit (LimitBusy while held, unless ``force``)."""
        reply = yield from self._step("delete_limit", [name, "1" if force else "0"], attempts=1)
        _raise_for(reply)

    # ------------------------------------------------------------- acquire & co

    def _acquire_epoch(self, request: AcquireRequest) -> str:
        """The epoch a retry's seq belongs to: a seq from before lost data means nothing."""
        if request.seq is None:
            return self.epoch
        with self._lock:
            return self.queued_in.get(request.request_id, "")

    def _acquire_args(self, request: AcquireRequest) -> list[object]:
        fields = [
            request.request_id,
            ",".join(request.names),
            request.occupy,
            request.kind.value,
            request.holder,
            request.missing,
            "" if request.seq is None else request.seq,
            self.host,
            self.pid,
        ]
        return [json.dumps(fields, separators=(",", ":"))]

    def acquire(self, request: AcquireRequest, *, resent: bool = False) -> Plan[Granted | Queued]:
        """Grant the request or queue it; ``resent``: sent before and its reply lost."""
        reply = yield from self._step(
            "acquire",
            self._acquire_args(request),
            epoch=self._acquire_epoch(request),
            marked=True,
            resent=resent,
        )
        return self._outcome(request, reply)

    def release(self, lease_id: str) -> Plan[bool]:
        """Release a lease; False if it was already gone."""
        reply, attempt = yield from self._tries("release", [lease_id])
        self._forget([lease_id])
        # After a lost reply the first try may have released it: that counts.
        return bool(reply["found"][0]) or attempt > 0

    def renew(self, lease_ids: Sequence[str], ticket_ids: Sequence[str]) -> Plan[Renewal]:
        """Extend this process's leases and tickets; report those that are gone."""
        reply = yield from self._step("renew", [len(lease_ids), *lease_ids, *ticket_ids])
        lost_leases = frozenset(str(i) for i in reply["lost_leases"])
        lost_tickets = frozenset(str(i) for i in reply["lost_tickets"])
        self._forget(lost_leases | lost_tickets)
        expires = reply.get("expires") or {}
        return Renewal(lost_leases, lost_tickets, {str(k): float(v) for k, v in expires.items()})

    def abandon(
        self, request_id: str, timed_out_on: str | None = None, *, resent: bool = False
    ) -> Plan[None]:
        """Withdraw a request; ``resent``: sent before and its reply lost."""
        # Marked when resent, so a timeout whose first try ran is not counted twice.
        args = ["" if timed_out_on is None else timed_out_on, 1, request_id]
        yield from self._step("abandon", args, marked=True, resent=resent)
        self._forget([request_id])

    def forget_process(self) -> Plan[None]:
        """Withdraw every ticket and lease of this process (a normal exit), in one try."""
        with self._lock:
            owned = sorted(self.owned)
        if owned:
            yield from self._step("abandon", ["", len(owned), *owned], attempts=1)
