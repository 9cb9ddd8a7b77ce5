"""Rates and durations as people write them (``10/s``, ``600/min``, ``30s``), both ways."""

from __future__ import annotations

import math
import re
from typing import Final

__all__ = [
    "DURATION_FORMS",
    "RATE_FORMS",
    "format_age",
    "format_duration",
    "format_rate",
    "parse_duration",
    "parse_rate",
]

RATE_FORMS: Final = "COUNT/PERIOD such as 10/s, 600/min, 2/h, 1/5s or 0.5/s"
DURATION_FORMS: Final = "a number of seconds, or a number with a unit such as 500ms, 30s, 5m, 2h"

_SECONDS: Final = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_RATE = re.compile(rf"({_NUMBER})\s*/\s*({_NUMBER})?\s*([a-z]+)", re.IGNORECASE)
_PART = re.compile(rf"\s*({_NUMBER})\s*([a-z]+)", re.IGNORECASE)


def _number(text: str) -> float | None:
    if re.fullmatch(_NUMBER, text) is None:
        return None
    return float(text)


def parse_rate(text: str) -> float:
    """Units per second of ``10/s``, ``600/min``, ``1/5s``, or a plain number (per second)."""
    raw = text.strip()
    plain = _number(raw)
    if plain is not None:
        per_second = plain
    else:
        match = _RATE.fullmatch(raw)
        unit = _SECONDS.get(match.group(3).lower()) if match else None
        if match is None or unit is None:
            raise ValueError(f"{text!r} is not a rate: use {RATE_FORMS}")
        period = float(match.group(2)) * unit if match.group(2) else unit
        if period <= 0:
            raise ValueError(f"{text!r} has a period of zero: use {RATE_FORMS}")
        per_second = float(match.group(1)) / period
    if not math.isfinite(per_second) or per_second <= 0:
        raise ValueError(f"{text!r} is not a rate above zero: use {RATE_FORMS}")
    return per_second


def parse_duration(text: str) -> float:
    """Seconds of ``500ms``, ``30s``, ``5m``, ``1m30s``, or a plain number of seconds."""
    raw = text.strip()
    plain = _number(raw)
    if plain is not None:
        return plain
    total, end = 0.0, 0
    for match in _PART.finditer(raw):
        unit = _SECONDS.get(match.group(2).lower())
        if match.start() != end or unit is None:
            break
        total += float(match.group(1)) * unit
        end = match.end()
    if end == 0 or end != len(raw):
        raise ValueError(f"{text!r} is not a duration: use {DURATION_FORMS}")
    return total


def _whole(value: float) -> int | None:
    nearest = round(value)
    return nearest if nearest >= 1 and math.isclose(value, nearest, rel_tol=1e-9) else None


def format_rate(per_second: float) -> str:
    """A rate as a person would write it: ``10/s``, ``12/min``, ``1/7s``, ``2/h``."""
    if per_second >= 1:
        return f"{per_second:g}/s"
    for unit, seconds in (("min", 60.0), ("h", 3600.0)):
        count = _whole(per_second * seconds)
        if count is not None:
            return f"{count}/{unit}"
    every = _whole(1 / per_second)
    if every is not None:
        return f"1/{every}s"
    count = _whole(per_second * 86400.0)
    return f"{count}/d" if count is not None else f"{per_second:.4g}/s"


def format_duration(seconds: float) -> str:
    """A configured duration: ``500ms``, ``30s``, ``5m``, ``2h``, ``90s``."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def format_age(seconds: float) -> str:
    """A measured span, to a sensible precision: ``0.4s``, ``12s``, ``3m05s``, ``2h10m``."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
