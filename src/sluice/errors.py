"""Every error Sluice raises, in one tree rooted at :class:`SluiceError`.

::

    SluiceError
     ├── InvalidRequest          (also ValueError)  a bad value or type; nothing changed
     │    └── ConfigError                            a bad setting or store URL
     ├── LimitNotFound           (also LookupError) one or more named limits do not exist
     ├── LimitExists                                create() on a name already taken
     ├── LimitBusy                                  delete() of a limit that has holders
     ├── AcquireTimeout          (also TimeoutError) a wait ran past its timeout
     ├── LeaseLost                                  a lease expired or was revoked while held
     ├── StoreError                                 the store failed or cannot be reached
     │    └── StoreUnavailable
     ├── RunNotFound             (also LookupError) no flow run has this id in the run history
     └── TaskTimeoutError        (also TimeoutError) a task or flow ran past its timeout_seconds

    MissingLimitWarning (UserWarning)  acquiring a missing limit with missing="warn"

Errors carry the facts as attributes (``limits``, ``waited``, ``position`` ...) so
callers need not parse messages.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AcquireTimeout",
    "ConfigError",
    "InvalidRequest",
    "LeaseLost",
    "LimitBusy",
    "LimitExists",
    "LimitNotFound",
    "MissingLimitWarning",
    "RunNotFound",
    "SluiceError",
    "StoreError",
    "StoreUnavailable",
    "TaskTimeoutError",
]


class SluiceError(Exception):
    """Base class of every error Sluice raises."""


class InvalidRequest(SluiceError, ValueError):
    """A value or type was rejected; the call changed nothing."""


class ConfigError(InvalidRequest):
    """A setting or store URL is invalid."""


class LimitNotFound(SluiceError, LookupError):
    """One or more named limits do not exist."""

    def __init__(self, names: Sequence[str], message: str | None = None) -> None:
        self.names: tuple[str, ...] = tuple(names)
        if message is None:
            listed = ", ".join(repr(n) for n in self.names)
            plural = "limits" if len(self.names) > 1 else "limit"
            message = (
                f"no {plural} named {listed}; create {'them' if len(self.names) > 1 else 'it'} "
                "first (Limits.create / `sluice limit create`), or pass missing='ignore'"
            )
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.names, str(self)))


class LimitExists(SluiceError):
    """A limit with this name already exists."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"limit {name!r} already exists; use ensure() to create-or-keep it, "
            "or update() to change it"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name,))


class LimitBusy(SluiceError):
    """A limit cannot be deleted while leases hold it."""

    def __init__(self, name: str, holders: int) -> None:
        self.name = name
        self.holders = holders
        super().__init__(
            f"limit {name!r} has {holders} holder(s); release them, reset() it, "
            "or delete with force=True"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name, self.holders))


class AcquireTimeout(SluiceError, TimeoutError):
    """Waiting for limits took longer than the timeout allowed."""

    def __init__(
        self,
        limits: Sequence[str],
        timeout: float,
        waited: float,
        position: int | None = None,
        blocked_on: str | None = None,
    ) -> None:
        self.limits: tuple[str, ...] = tuple(limits)
        self.timeout = timeout
        self.waited = waited
        self.position = position
        self.blocked_on = blocked_on
        where = ""
        if blocked_on is not None:
            where = f" blocked on {blocked_on!r}"
            if position is not None:
                where += f" at queue position {position}"
        super().__init__(
            f"gave up acquiring {', '.join(repr(n) for n in self.limits)} after "
            f"{waited:.3f}s (timeout={timeout:g}s){where}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (
            type(self),
            (self.limits, self.timeout, self.waited, self.position, self.blocked_on),
        )


class LeaseLost(SluiceError):
    """A lease expired or was revoked (reset, forced delete) while its holder ran."""

    def __init__(self, lease_id: str, names: Sequence[str], reason: str = "") -> None:
        self.lease_id = lease_id
        self.names: tuple[str, ...] = tuple(names)
        self.reason = reason
        detail = f": {reason}" if reason else ""
        super().__init__(
            f"lease {lease_id} on {', '.join(repr(n) for n in self.names)} was lost{detail}; "
            "its units were released before the holder finished"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.lease_id, self.names, self.reason))


class StoreError(SluiceError):
    """The store failed to carry out an operation."""


class StoreUnavailable(StoreError):
    """The store cannot be reached."""


class RunNotFound(SluiceError, LookupError):
    """No flow run with this id is in the run history (never recorded, or pruned)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(
            f"no flow run with id {run_id!r} in the run history; list recent runs with "
            "`sluice run ls` (old runs are pruned past SLUICE_HISTORY_KEEP)"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.run_id,))


class TaskTimeoutError(SluiceError, TimeoutError):
    """A task or flow ran longer than its ``timeout_seconds``."""

    def __init__(self, name: str, timeout: float, kind: str = "task") -> None:
        self.name = name
        self.timeout = timeout
        self.kind = kind
        super().__init__(
            f"{kind} {name!r} timed out after {timeout:g}s (timeout_seconds={timeout:g})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name, self.timeout, self.kind))


class MissingLimitWarning(UserWarning):
    """A named limit does not exist and was skipped because missing="warn"."""
