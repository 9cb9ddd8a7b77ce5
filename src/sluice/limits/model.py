"""The engine's values: limits, holders, waiters, requests and outcomes, with validation.

Everything here is pure: frozen dataclasses and the checks that turn user input
into them. Every check raises :class:`~sluice.errors.InvalidRequest` naming the
value and the rule, before any state changes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Final, Literal

from sluice.errors import InvalidRequest

__all__ = [
    "DEFAULT_LEASE_TTL",
    "MAX_LEASE_TTL",
    "MAX_RATE",
    "MAX_UNITS",
    "MIN_LEASE_TTL",
    "MIN_RATE",
    "NAME_PATTERN",
    "WAIT_BUCKETS",
    "Holder",
    "Kind",
    "Limit",
    "LimitChanges",
    "LimitStatus",
    "LimitTotals",
    "MissingPolicy",
    "Names",
    "WaitInfo",
    "Waiter",
    "default_burst",
    "fence_of",
    "validate_missing",
    "validate_name",
    "validate_names",
    "validate_occupy",
    "validate_timeout",
    "wait_bucket",
]

DEFAULT_LEASE_TTL: Final = 30.0
MAX_UNITS: Final = 2**31 - 1
"""The most slots, burst or occupy a limit may have: the same on every store."""
MIN_RATE: Final = 1e-6
"""The slowest rate, in units per second: one unit every 11.6 days."""
MAX_RATE: Final = 1e9
"""The fastest rate, in units per second."""
MIN_LEASE_TTL: Final = 1.0
MAX_LEASE_TTL: Final = 86_400.0
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
WAIT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Upper bounds (seconds) of the wait-time histograms; a last, unbounded bucket follows."""

MissingPolicy = Literal["raise", "warn", "ignore"]
Names = str | Sequence[str]
"""One limit name, or several (de-duplicated and sorted before use)."""
_MISSING_POLICIES: Final = ("raise", "warn", "ignore")


class Kind(str, Enum):
    """What an acquisition takes: slots and tokens (concurrency), or tokens only (rate)."""

    CONCURRENCY = "concurrency"
    RATE = "rate"


class _Unset(Enum):
    UNSET = "UNSET"


UNSET: Final = _Unset.UNSET


def utc(ts: float) -> datetime:
    """Turn store seconds since the epoch into an aware UTC datetime."""
    return datetime.fromtimestamp(ts, tz=timezone.utc)


# --------------------------------------------------------------------------- checks


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid limit name, else raise InvalidRequest."""
    if not isinstance(name, str):
        raise InvalidRequest(f"limit name must be a str, got {type(name).__name__} {name!r}")
    if NAME_PATTERN.fullmatch(name) is None:
        raise InvalidRequest(
            f"invalid limit name {name!r}: use 1-128 characters of letters, digits and ._:/-"
        )
    return name


_checked_names: dict[tuple[str, ...], tuple[str, ...]] = {}
"""Tuples of names already checked (task runs ask with the same few, thousands of times)."""


def validate_names(names: object) -> tuple[str, ...]:
    """Return the de-duplicated, sorted names of a str or a list of str."""
    if isinstance(names, str):
        return (validate_name(names),)
    if isinstance(names, tuple):
        known = _checked_names.get(names)
        if known is not None:
            return known
        if len(_checked_names) < 4096 and all(isinstance(n, str) for n in names):
            result = validate_names(list(names))
            _checked_names[names] = result
            return result
    if not isinstance(names, Iterable) or isinstance(names, (bytes, bytearray, dict)):
        raise InvalidRequest(
            f"limit names must be a str or a list of str, got {type(names).__name__} {names!r}"
        )
    checked = {validate_name(n) for n in names}
    if not checked:
        raise InvalidRequest("at least one limit name is required, got an empty list")
    return tuple(sorted(checked))


def _check_units(what: str, value: object, none_ok: bool) -> int | None:
    """A whole number of units in 1 .. MAX_UNITS (or None, where allowed)."""
    rule = f"{what} must be an int from 1 to {MAX_UNITS:,}" + (" or None" if none_ok else "")
    if value is None and none_ok:
        return None
    if not _is_int(value):
        raise InvalidRequest(f"{rule}, got {type(value).__name__} {value!r}")
    assert isinstance(value, int)
    if not 1 <= value <= MAX_UNITS:
        raise InvalidRequest(f"{rule}, got {value!r}")
    return value


def validate_occupy(occupy: object) -> int:
    """Return ``occupy`` if it is a whole number of units from 1 to MAX_UNITS."""
    checked = _check_units("occupy", occupy, none_ok=False)
    assert checked is not None
    return checked


def validate_timeout(timeout: object) -> float | None:
    """Return ``timeout`` as seconds (None: wait forever; 0: a single attempt)."""
    if timeout is None:
        return None
    if not _is_number(timeout):
        raise InvalidRequest(
            f"timeout must be None or a number of seconds >= 0, "
            f"got {type(timeout).__name__} {timeout!r}"
        )
    value = float(timeout)  # type: ignore[arg-type]
    if math.isnan(value) or value < 0:
        raise InvalidRequest(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
    return None if value == math.inf else value


def validate_missing(missing: object) -> MissingPolicy:
    """Return a missing-limit policy: "raise", "warn" or "ignore"."""
    if missing == "raise" or missing == "warn" or missing == "ignore":
        return missing
    raise InvalidRequest(f"missing must be one of 'raise', 'warn', 'ignore', got {missing!r}")


def _check_slots(slots: object) -> int | None:
    return _check_units("slots", slots, none_ok=True)


def _check_rate(rate: object) -> float | None:
    rule = f"rate must be units per second from {MIN_RATE:g} to {MAX_RATE:g}, or None"
    if rate is None:
        return None
    if not _is_number(rate):
        raise InvalidRequest(f"{rule}, got {type(rate).__name__} {rate!r}")
    value = float(rate)  # type: ignore[arg-type]
    if not MIN_RATE <= value <= MAX_RATE:  # also rejects NaN and infinities
        raise InvalidRequest(f"{rule}, got {rate!r}")
    return value


def _check_burst(burst: object) -> int | None:
    return _check_units("burst", burst, none_ok=True)


def _check_ttl(lease_ttl: object) -> float:
    if not _is_number(lease_ttl):
        raise InvalidRequest(
            f"lease_ttl must be seconds between {MIN_LEASE_TTL:g} and {MAX_LEASE_TTL:g}, "
            f"got {type(lease_ttl).__name__} {lease_ttl!r}"
        )
    value = float(lease_ttl)  # type: ignore[arg-type]
    if not (MIN_LEASE_TTL <= value <= MAX_LEASE_TTL):  # also rejects NaN
        raise InvalidRequest(
            f"lease_ttl must be seconds between {MIN_LEASE_TTL:g} and {MAX_LEASE_TTL:g} "
            f"(1 s to 1 day), got {lease_ttl!r}"
        )
    return value


def default_burst(rate: float) -> int:
    """The burst a rate gets when none is given: ``max(1, ceil(rate))``."""
    return max(1, math.ceil(rate))


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Limit:
    """A named limit: slots held at once and/or units started per second."""

    name: str
    slots: int | None = None
    rate: float | None = None
    burst: int | None = None
    active: bool = True
    lease_ttl: float = DEFAULT_LEASE_TTL

    @classmethod
    def build(
        cls,
        name: object,
        *,
        slots: object = None,
        rate: object = None,
        burst: object = None,
        active: object = True,
        lease_ttl: object = DEFAULT_LEASE_TTL,
    ) -> Limit:
        """Validate user input into a Limit, filling in the default burst."""
        checked_name = validate_name(name)
        checked_slots = _check_slots(slots)
        checked_rate = _check_rate(rate)
        checked_burst = _check_burst(burst)
        if not isinstance(active, bool):
            raise InvalidRequest(f"active must be a bool, got {type(active).__name__} {active!r}")
        ttl = _check_ttl(lease_ttl)
        if checked_burst is not None and checked_rate is None:
            raise InvalidRequest(
                f"limit {checked_name!r}: burst={checked_burst} needs a rate; give rate= too"
            )
        if checked_rate is not None and checked_burst is None:
            checked_burst = default_burst(checked_rate)
        if checked_slots is None and checked_rate is None:
            raise InvalidRequest(
                f"limit {checked_name!r} needs slots= (units held at once), "
                "rate= (units per second), or both"
            )
        return cls(checked_name, checked_slots, checked_rate, checked_burst, active, ttl)

    def max_occupy(self, kind: Kind) -> int | None:
        """The most units one request may take on this limit, or None if unbounded."""
        bounds = []
        if kind is Kind.CONCURRENCY and self.slots is not None:
            bounds.append(self.slots)
        if self.burst is not None:
            bounds.append(self.burst)
        return min(bounds) if bounds else None


@dataclass(frozen=True)
class LimitChanges:
    """Fields to change on a limit; UNSET leaves a field as it is."""

    slots: int | _Unset | None = UNSET
    rate: float | _Unset | None = UNSET
    burst: int | _Unset | None = UNSET
    lease_ttl: float | _Unset = UNSET

    @classmethod
    def build(
        cls,
        *,
        slots: object = UNSET,
        rate: object = UNSET,
        burst: object = UNSET,
        lease_ttl: object = UNSET,
    ) -> LimitChanges:
        """Validate each given field; raise InvalidRequest if none is given."""
        if all(v is UNSET for v in (slots, rate, burst, lease_ttl)):
            raise InvalidRequest("update() needs at least one of slots=, rate=, burst=, lease_ttl=")
        return cls(
            slots=UNSET if slots is UNSET else _check_slots(slots),
            rate=UNSET if rate is UNSET else _check_rate(rate),
            burst=UNSET if burst is UNSET else _check_burst(burst),
            lease_ttl=UNSET if lease_ttl is UNSET else _check_ttl(lease_ttl),
        )

    def apply(self, limit: Limit) -> Limit:
        """Return ``limit`` with these changes, checked as a whole."""
        slots = limit.slots if self.slots is UNSET else self.slots
        rate = limit.rate if self.rate is UNSET else self.rate
        burst = limit.burst if self.burst is UNSET else self.burst
        ttl = limit.lease_ttl if self.lease_ttl is UNSET else self.lease_ttl
        if rate is None and self.burst is UNSET:
            burst = None  # removing the rate removes its bucket
        elif self.rate is not UNSET and self.burst is UNSET and limit.burst is None:
            burst = None  # a rate added without a burst gets the default one
        return Limit.build(
            limit.name, slots=slots, rate=rate, burst=burst, active=limit.active, lease_ttl=ttl
        )

    def touches_rate(self) -> bool:
        """Whether the rate bucket must restart full."""
        return self.rate is not UNSET or self.burst is not UNSET


# --------------------------------------------------------------------------- status


def fence_of(lease_id: str) -> int:
    """The fencing token of a lease: the grant number its id ends with (``<ticket>.<fence>``).

    Every store numbers its grants with one counter that only grows, so a later grant
    of a limit always has a greater fence. A lease named before fencing existed (no
    number at the end of its id) has fence 0, below every other.
    """
    _, dot, suffix = lease_id.rpartition(".")
    return int(suffix) if dot and suffix.isascii() and suffix.isdigit() else 0


@dataclass(frozen=True)
class Holder:
    """A lease holding units of a limit."""

    lease_id: str
    occupy: int
    holder: str
    host: str
    pid: int
    since: datetime
    expires_at: datetime
    fence: int = field(init=False)
    """The lease's fencing token (:func:`fence_of` its id): greater for every later grant."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "fence", fence_of(self.lease_id))


@dataclass(frozen=True)
class Waiter:
    """A waiting ticket of a limit: ``count`` requests of one process, in line together.

    A process puts identical requests (same limits, occupy and holder) that wait at
    the same time on one ticket, so ten thousand task runs cost the store what one
    does; ``position`` is the 1-based place of its first request in the limit's
    queue, counting every request ahead.
    """

    ticket_id: str
    occupy: int
    holder: str
    host: str
    pid: int
    since: datetime
    position: int
    count: int = 1
    """How many requests the ticket stands for (each wants ``occupy`` units)."""


@dataclass(frozen=True)
class WaitInfo:
    """Where a queued acquire stands, as told to an ``on_wait`` callback."""

    names: tuple[str, ...]
    """Every limit the request asks for."""
    blocked_on: str
    """The limit the request is queued behind right now."""
    position: int
    """The request's 1-based place in that limit's queue (1: next in line)."""
    waited: float
    """Seconds waited so far."""


def wait_bucket(seconds: float) -> int:
    """The index of the :data:`WAIT_BUCKETS` bucket a wait falls in (the first bound >= it)."""
    for i, bound in enumerate(WAIT_BUCKETS):
        if seconds <= bound:
            return i
    return len(WAIT_BUCKETS)


@dataclass(frozen=True)
class LimitTotals:
    """What a limit has done since it was created, counted by the store for every process.

    Counters only grow; deleting the limit deletes them, and a limit created
    again starts from zero. A disabled limit counts nothing (it records nothing).
    """

    grants: int = 0
    """Acquisitions granted on the limit (concurrency and rate)."""
    granted_units: int = 0
    """Units granted: the sum of ``occupy`` over those grants."""
    timeouts: int = 0
    """Acquisitions that gave up with AcquireTimeout while queued behind the limit."""
    expired_leases_reclaimed: int = 0
    """Leases holding the limit that the store took back because they expired (their
    holder stopped renewing: it crashed, hung or lost the store) or their process died."""
    wait_buckets: tuple[int, ...] = (0,) * (len(WAIT_BUCKETS) + 1)
    """Grants per wait-time bucket (not cumulative): one per bound of
    :data:`WAIT_BUCKETS`, then the overflow. A wait runs from the request's first
    arrival at the store to its grant, on the store's clock; a grant at once waited 0."""
    wait_seconds: float = 0.0
    """Seconds waited, summed over the grants."""

    @classmethod
    def from_store(
        cls,
        grants: int,
        granted_units: int,
        timeouts: int,
        reclaimed: int,
        queued_waits: Sequence[int],
        wait_seconds: float,
    ) -> LimitTotals:
        """Totals as stores keep them: ``queued_waits`` counts only grants that had queued;
        every other grant waited 0 and belongs to the first bucket."""
        waits = [int(n) for n in queued_waits]
        if len(waits) != len(WAIT_BUCKETS) + 1:
            waits = (waits + [0] * (len(WAIT_BUCKETS) + 1))[: len(WAIT_BUCKETS) + 1]
        waits[0] += max(int(grants) - sum(waits), 0)
        return cls(
            int(grants),
            int(granted_units),
            int(timeouts),
            int(reclaimed),
            tuple(waits),
            max(float(wait_seconds), 0.0),
        )


@dataclass(frozen=True)
class LimitStatus:
    """A snapshot of one limit: its definition, who holds it and who waits."""

    limit: Limit
    in_use: int
    holders: list[Holder] = field(default_factory=list)
    waiters: list[Waiter] = field(default_factory=list)
    next_token_in: float | None = None
    taken_at: datetime | None = None
    totals: LimitTotals = field(default_factory=LimitTotals)
    """What the limit has done since it was created (every process's grants, waits ...)."""
