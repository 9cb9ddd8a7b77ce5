"""Times as Sluice shows and reads them: one convention for the CLI and the dashboard.

Shown to people: UTC, ISO 8601 with a ``Z``, to the second (``2025-01-31T12:00:00Z``;
a time of day alone: ``12:00:00Z``), whatever the viewer's zone, so that what the CLI
prints, the dashboard shows and a colleague elsewhere reads are the same instant.
In JSON: ISO 8601 in UTC with full precision and a ``+00:00`` offset
(``2025-01-31T12:00:00.123456+00:00``), as every ``--json`` document has had it
(Python 3.10's ``datetime.fromisoformat`` reads it; it does not read a ``Z``).
Read from people (filters such as ``--since``): either form, a naive time meaning UTC,
or an age such as ``2h`` meaning that long ago.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from sluice.report.units import DURATION_FORMS, parse_duration

__all__ = ["TIME_FORMS", "clock", "json_time", "parse_time", "shown"]

TIME_FORMS = (
    "an ISO 8601 time such as 2025-01-31T12:00:00Z (no zone: UTC), or an age such as "
    f"30m or 2h (that long ago; {DURATION_FORMS})"
)


def _utc(moment: float | datetime) -> datetime:
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            return moment.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc)
    return datetime.fromtimestamp(moment, timezone.utc)


def json_time(moment: float | datetime | None) -> str | None:
    """A moment (seconds since the epoch, or a datetime) as JSON has it, or None."""
    if moment is None:
        return None
    return _utc(moment).isoformat(timespec="microseconds")


def shown(moment: float | datetime | None, missing: str = "-") -> str:
    """A moment as people see it: ``2025-01-31T12:00:00Z``."""
    if moment is None:
        return missing
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def clock(moment: float | datetime | None, missing: str = "-") -> str:
    """A moment's time of day as people see it: ``12:00:00Z``."""
    if moment is None:
        return missing
    return _utc(moment).strftime("%H:%M:%SZ")


def parse_time(text: str, now: float | None = None) -> float:
    """Seconds since the epoch of an ISO 8601 time (``Z``, an offset, or none: UTC) or of
    an age (``2h``: two hours before ``now``); ValueError naming the forms otherwise."""
    raw = text.strip()
    if raw and (raw[0].isdigit() or raw[0] == ".") and "-" not in raw and ":" not in raw:
        try:
            age = parse_duration(raw)
        except ValueError:
            pass
        else:
            return (time.time() if now is None else now) - age
    try:
        moment = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use {TIME_FORMS}") from None
    return _utc(moment).timestamp()
