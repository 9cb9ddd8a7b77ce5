"""The audit record of admin actions: who changed a limit, what changed, and when.

Every store keeps one (:meth:`~sluice.store.base.Store.admin_history`): the admin steps
``update_limit``, ``set_active`` (enable, disable), ``reset_limit`` and ``delete_limit``
each leave an :class:`AdminRecord` naming the limit, the action, its changes, the
store's time and the :class:`Actor`. SQLite and PostgreSQL write it in the same
transaction as the action (an action is never done without its record, nor recorded
without being done); Redis writes it right after the action's script succeeded (its
scripts cannot call one another, and a ``MULTI`` could not make the record depend on
the action's success), so a process that dies between the two leaves the action
unrecorded. Records are kept by limit name, so a deleted limit's history stays
readable; each store keeps the newest :data:`ADMIN_KEEP` records per limit name.

Who acted is the process's :func:`current_actor`: the OS user, host, pid and program
of the process (the CLI, a script using the Python API), unless the caller said
otherwise with :func:`acting_as` (the dashboard names the holder of its admin token and
the client's address).
"""

from __future__ import annotations

import contextlib
import contextvars
import getpass
import math
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from sluice.errors import InvalidRequest
from sluice.limits.model import Limit

__all__ = [
    "ADMIN_ACTIONS",
    "ADMIN_KEEP",
    "Actor",
    "AdminRecord",
    "acting_as",
    "check_history_count",
    "current_actor",
    "definition",
    "limit_changes",
    "process_actor",
    "record_from_json",
]

ADMIN_ACTIONS: Final = ("update", "enable", "disable", "reset", "delete")
"""The actions that leave a record."""

ADMIN_KEEP: Final = 1000
"""Records kept per limit name, in every store (the newest; older ones are dropped as new
ones are written)."""

_FIELDS: Final = ("slots", "rate", "burst", "lease_ttl", "active")


@dataclass(frozen=True)
class Actor:
    """Who did an admin action: a process (the CLI, the Python API) or a dashboard user."""

    user: str
    """The OS user of the process, or ``token holder <fingerprint>`` for the dashboard."""
    host: str
    """The host the acting process ran on (for the dashboard: the one serving it)."""
    pid: int
    program: str
    """The program that acted: ``sluice`` (the CLI), a script's name, ``sluice ui``."""
    address: str | None = None
    """For the dashboard: the client's address (``host:port``) the request came from."""

    def describe(self) -> str:
        """``alice@build-1 (sluice, pid 4242)``, or the token holder and where from."""
        where = f"{self.program} on {self.host}, pid {self.pid}"
        if self.address is not None:
            return f"{self.user} from {self.address} ({where})"
        return f"{self.user}@{self.host} ({self.program}, pid {self.pid})"


@dataclass(frozen=True)
class AdminRecord:
    """One admin action on one limit, as the store recorded it."""

    limit: str
    action: str
    """One of :data:`ADMIN_ACTIONS`."""
    at: float
    """When, on the store's clock (seconds since the epoch)."""
    who: Actor
    changes: Mapping[str, Any] = field(default_factory=dict)
    """What changed: for ``update``, ``enable`` and ``disable``, field -> ``{"from", "to"}``
    (fields as in a limit; only those that changed); for ``reset``, ``{"revoked": n}``;
    for ``delete``, ``{"force": bool, "limit": the definition it had}``."""

    def to_json(self) -> dict[str, Any]:
        """The record as stores keep it and ``limit history --json`` prints it (``at`` a number)."""
        return {
            "limit": self.limit,
            "action": self.action,
            "at": self.at,
            "who": asdict(self.who),
            "changes": dict(self.changes),
        }


def record_from_json(data: Mapping[str, Any]) -> AdminRecord:
    """A record from what :meth:`AdminRecord.to_json` gave (unknown fields ignored)."""
    who = data.get("who") or {}
    return AdminRecord(
        str(data["limit"]),
        str(data["action"]),
        float(data["at"]),
        Actor(
            str(who.get("user", "")),
            str(who.get("host", "")),
            int(who.get("pid", 0)),
            str(who.get("program", "")),
            None if who.get("address") is None else str(who["address"]),
        ),
        dict(data.get("changes") or {}),
    )


def _program() -> str:
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    name = os.path.basename(argv0)
    if name == "__main__.py":  # python -m PACKAGE
        name = os.path.basename(os.path.dirname(argv0))
    return name or "python"


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no passwd entry and no LOGNAME/USER (some containers)
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def process_actor() -> Actor:
    """This process as an actor: its OS user, host, pid and program."""
    return Actor(_user(), socket.gethostname(), os.getpid(), _program())


_ACTOR: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("sluice_actor", default=None)


def current_actor() -> Actor:
    """Who admin actions taken here are recorded as: the one :func:`acting_as` set, else
    this process (:func:`process_actor`)."""
    return _ACTOR.get() or process_actor()


@contextlib.contextmanager
def acting_as(actor: Actor) -> Iterator[Actor]:
    """Record the admin actions of this thread (or task) inside the block as ``actor``'s."""
    token = _ACTOR.set(actor)
    try:
        yield actor
    finally:
        _ACTOR.reset(token)


def _same(before: object, after: object) -> bool:
    if isinstance(before, float) and isinstance(after, float):
        return math.isclose(before, after, rel_tol=1e-12)
    return before == after


def limit_changes(old: Limit, new: Limit) -> dict[str, dict[str, Any]]:
    """The fields that differ between two definitions: name -> ``{"from": old, "to": new}``."""
    changes = {}
    for name in _FIELDS:
        before, after = getattr(old, name), getattr(new, name)
        if not _same(before, after):
            changes[name] = {"from": before, "to": after}
    return changes


def definition(limit: Limit) -> dict[str, Any]:
    """A limit's definition as a record keeps it (a deleted limit's ``changes["limit"]``)."""
    return {name: getattr(limit, name) for name in ("name", *_FIELDS)}


def check_history_count(count: object) -> int:
    """``count`` if it is an int from 1 to :data:`ADMIN_KEEP`; InvalidRequest otherwise."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= ADMIN_KEEP:
        raise InvalidRequest(f"count must be an int from 1 to {ADMIN_KEEP}, got {count!r}")
    return count
