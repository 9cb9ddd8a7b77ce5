"""The Redis store's operations as plans: no I/O, driven by the store (``store.py``).

Every store operation is a plan (:mod:`sluice.store.plans`): a generator that
yields :class:`Script` calls (one step script each, run by ``EVALSHA``),
:class:`Command` calls (``TIME``, ``INFO``) and :class:`~sluice.store.plans.Sleep`
pauses, and is sent each call's reply. The driver throws the Sluice error a
failed call means into the plan at its ``yield``, so trying a step again after a
lost connection (marked "resent", so the script can tell), reading replies, and
this process's client-side state (its identity, the deployment's epoch, the
tickets and leases it has, for wake-ups after a lost subscription and for
closing) exist once, in :class:`Engine`. What the scripts are sent and answer is
in :mod:`sluice.store.redis.wire`.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sluice.errors import LimitNotFound, StoreError, StoreUnavailable
from sluice.limits.model import Limit, LimitChanges, LimitStatus
from sluice.store.base import (
    Exchange,
    Exchanged,
    HeldSpan,
    Renewal,
    StoreDiagnosis,
    WakeHandler,
)
from sluice.store.plans import Plan, Sleep
from sluice.store.redis.config import (
    ATTEMPTS,
    CONFLICT_RETRIES,
    PoolTimeout,
    RedisConfig,
    backoff,
)
from sluice.store.redis.wire import (
    batch_json,
    diagnosis,
    exchanged,
    held_spans_of,
    limit_args,
    limit_of,
    raise_for,
    status_of,
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


class Engine:
    """This process's identity and client-side state in one deployment, and every operation."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.url = config.url
        self.epoch = ""
        """The deployment's data epoch as last seen: a new one means its data was lost."""
        self.handler: WakeHandler | None = None
        """Where this process's wake-ups (ticket ids) go."""
        self._start()

    def _start(self) -> None:
        self._lock = threading.Lock()
        self.tickets: dict[str, str] = {}
        """Ticket id -> the epoch it was queued in: this process's tickets that may still
        wait, or have grants handed to them (told after a lost subscription, withdrawn
        on close)."""
        self.leases: set[str] = set()
        """Leases this process holds (given back on close)."""
        self._exchanges = itertools.count(1)
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
        marked: bool = False,
        resent: bool = False,
    ) -> Plan[dict[str, Any]]:
        """Run one step script, again after a lost connection, up to ``attempts`` times.

        With ``marked``, the tries after the first carry the resent marker as
        their last argument (every try does if ``resent``: sent before, reply
        lost), so the script can tell. Returns the decoded reply.
        """
        for attempt in range(attempts):
            argv = [self.process_id, self.epoch, *args]
            if marked and (resent or attempt > 0):
                argv.append(_RESENT)
            try:
                raw = yield Script(step, tuple(argv))
            except StoreUnavailable as exc:
                if attempt + 1 == attempts or isinstance(exc.__cause__, PoolTimeout):
                    raise  # a full pool was waited for long enough already
                yield Sleep(backoff(attempt))
                continue
            return self._decode(raw)
        raise AssertionError("unreachable")

    def _step(
        self, step: str, args: Sequence[object], *, attempts: int = ATTEMPTS
    ) -> Plan[dict[str, Any]]:
        return (yield from self._tries(step, args, attempts=attempts))

    # ------------------------------------------------------------- replies and wake-ups

    def _decode(self, raw: object) -> dict[str, Any]:
        text = raw.decode() if isinstance(raw, bytes) else raw
        if not isinstance(text, str):
            raise StoreError(f"Redis store {self.url} gave an unexpected reply: {raw!r}")
        reply: dict[str, Any] = json.loads(text)
        self.epoch = str(reply.get("epoch", self.epoch))
        wake = reply.get("wake")
        if wake:
            self.deliver([str(t) for t in wake])
        return reply

    def deliver(self, ticket_ids: Collection[str]) -> None:
        """Wake these tickets' waiters: they ask the store, which claims what was handed."""
        if ticket_ids and self.handler is not None:
            self.handler(ticket_ids)

    def wake_all(self) -> None:
        """After a lost subscription: every local waiter looks again (a wake-up may be lost)."""
        with self._lock:
            tickets = list(self.tickets)
        self.deliver(tickets)

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
        return limit_of(data), int(data["version"])

    def list_limits(self) -> Plan[list[Limit]]:
        """Every limit, sorted by name."""
        reply = yield from self._step("get_limits", [])
        return [limit_of(d) for d in reply["limits"]]

    def inspect_limit(self, name: str) -> Plan[LimitStatus]:
        """The limit with its holders, waiters, next token time and totals."""
        reply = yield from self._step("inspect_limit", [name])
        raise_for(reply)
        return status_of(reply)

    def held_spans(self, names: Sequence[str], since: float, until: float) -> Plan[list[HeldSpan]]:
        """Who held these limits' units in [since, until]: ended leases on record, and now."""
        wanted = sorted(set(names))
        if not wanted:
            return []
        raw = yield Script("held_spans", (repr(since), repr(until), *wanted))
        return held_spans_of(raw)

    def diagnose(self) -> Plan[StoreDiagnosis]:
        """The schema version, expired leases and server facts; changes nothing."""
        raw = yield Script("diagnose")
        server = yield Command("INFO", ("server",))
        persistence = yield Command("INFO", ("persistence",))
        return diagnosis(raw, server, persistence, self.config.prefix)

    # ------------------------------------------------------------- admin

    def create_limit(self, limit: Limit) -> Plan[Limit]:
        """Create a limit (LimitExists if the name is taken)."""
        return self._define(limit, ensure=False)

    def ensure_limit(self, limit: Limit) -> Plan[Limit]:
        """Create a limit unless one has its name; the stored limit either way."""
        return self._define(limit, ensure=True)

    def _define(self, limit: Limit, *, ensure: bool) -> Plan[Limit]:
        # Creating again after a lost reply would say "exists": only ensure is resent.
        args = [*limit_args(limit), "1" if ensure else "0"]
        reply = yield from self._step("create_limit", args, attempts=ATTEMPTS if ensure else 1)
        raise_for(reply)
        return limit_of(reply["limit"])

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
                raise_for(reply)
                return limit_of(reply["limit"])
        raise StoreError(f"limit {name!r} kept changing while being updated; try again")

    def set_active(self, name: str, active: bool) -> Plan[Limit]:
        """Enable or disable a limit."""
        reply = yield from self._step("set_active", [name, "1" if active else "0"])
        raise_for(reply)
        return limit_of(reply["limit"])

    def reset_limit(self, name: str) -> Plan[int]:
        """Revoke every lease of a limit and refill its bucket; how many were revoked."""
        reply = yield from self._step("reset_limit", [name], attempts=1)
        raise_for(reply)
        return int(reply["revoked"])

    def delete_limit(self, name: str, force: bool) -> Plan[None]:
        """Delete a limit (LimitBusy while held, unless ``force``)."""
        reply = yield from self._step("delete_limit", [name, "1" if force else "0"], attempts=1)
        raise_for(reply)

    # ------------------------------------------------------------- the hot path

    def exchange(
        self, batch: Exchange, *, exchange_id: str | None = None, resent: bool = False
    ) -> Plan[Exchanged]:
        """Do a process's batch as one step; ``resent``: sent before and its reply lost.

        Every try carries the same exchange id. A try after a lost reply is marked, and
        the script answers it with the reply it stored for that id if the earlier try
        ran, so nothing is granted, released or withdrawn twice.
        """
        xid = exchange_id or str(next(self._exchanges))
        with self._lock:
            epochs = {a.ticket_id: self.tickets.get(a.ticket_id, self.epoch) for a in batch.asks}
        args = [batch_json(batch, xid, self.host, self.pid, epochs)]
        reply = yield from self._tries("exchange", args, marked=True, resent=resent)
        answer = exchanged(reply)
        gone = [str(t) for t in reply.get("gone") or ()]
        self._note(batch, answer, gone, str(reply.get("epoch", self.epoch)))
        return answer

    def _note(self, batch: Exchange, answer: Exchanged, gone: list[str], epoch: str) -> None:
        """Keep track of the tickets and leases this process has after an exchange."""
        with self._lock:
            self.leases.difference_update(batch.releases)
            self.leases.update(g.lease_id for g in answer.grants if g.lease_id is not None)
            for ask in batch.asks:  # not waiting: served, refused or gone, nothing handed
                if ask.ticket_id not in answer.queued:
                    self.tickets.pop(ask.ticket_id, None)
            for ticket_id in gone:
                self.tickets.pop(ticket_id, None)
            for ticket_id in answer.queued:
                self.tickets[ticket_id] = epoch

    def renew(self, lease_ids: Sequence[str], ticket_ids: Sequence[str]) -> Plan[Renewal]:
        """Extend this process's leases and tickets; report those that are gone."""
        reply = yield from self._step("renew", [len(lease_ids), *lease_ids, *ticket_ids])
        lost_leases = frozenset(str(i) for i in reply.get("lost_leases") or ())
        lost_tickets = frozenset(str(i) for i in reply.get("lost_tickets") or ())
        with self._lock:
            self.leases.difference_update(lost_leases)
        expires = reply.get("expires") or {}
        return Renewal(lost_leases, lost_tickets, {str(k): float(v) for k, v in expires.items()})

    def forget_process(self) -> Plan[None]:
        """Withdraw every ticket and lease of this process (a normal exit), in one try."""
        with self._lock:
            tickets, leases = sorted(self.tickets), sorted(self.leases)
            self.tickets.clear()
            self.leases.clear()
        if tickets or leases:
            yield from self._step("forget_process", [len(tickets), *tickets, *leases], attempts=1)
