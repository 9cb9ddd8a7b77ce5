"""What a caller asked for, checked: acquire arguments into a request, create() into a Limit.

Pure (no I/O), shared by the sync and async front doors so the two cannot drift.
Every check raises :class:`~sluice.errors.InvalidRequest` naming the value and the
rule, before anything is sent to the store.
"""

from __future__ import annotations

import threading
import warnings

from sluice.errors import InvalidRequest, MissingLimitWarning
from sluice.limits.model import (
    Kind,
    Limit,
    MissingPolicy,
    validate_missing,
    validate_names,
    validate_occupy,
)
from sluice.store.base import AcquireRequest

__all__ = ["limit_spec", "new_request", "warn_missing"]

_MAX_HOLDER = 256


def new_request(
    names: object,
    occupy: object,
    kind: Kind,
    holder: object,
    missing: MissingPolicy,
) -> AcquireRequest:
    """Validate acquire arguments into the request one caller stands in line with."""
    checked_names = validate_names(names)
    checked_occupy = validate_occupy(occupy)
    if holder is not None and (not isinstance(holder, str) or len(holder) > _MAX_HOLDER):
        raise InvalidRequest(
            f"holder must be a str of at most {_MAX_HOLDER} characters, got {holder!r}"
        )
    label = holder if isinstance(holder, str) else threading.current_thread().name
    return AcquireRequest(
        request_id="",
        names=checked_names,
        occupy=checked_occupy,
        kind=kind,
        holder=label,
        missing=validate_missing(missing),
    )


def warn_missing(request: AcquireRequest, missing: tuple[str, ...], stacklevel: int) -> None:
    """Warn about names that do not exist, if the request's policy says "warn"."""
    if missing and request.missing == "warn":
        warnings.warn(
            MissingLimitWarning(
                f"limit(s) {', '.join(repr(n) for n in missing)} do not exist; "
                "acquired the others (missing='warn')"
            ),
            stacklevel=stacklevel + 1,
        )


def limit_spec(
    name: object,
    slots: object,
    rate: object,
    burst: object,
    lease_ttl: object,
    active: object,
) -> Limit:
    """Validate create()/ensure() arguments into a Limit."""
    return Limit.build(
        name, slots=slots, rate=rate, burst=burst, lease_ttl=lease_ttl, active=active
    )
