"""click parameter types for rates and durations, and ``none`` to remove a setting."""

from __future__ import annotations

from enum import Enum
from typing import Any, Final

import click

from sluice.report.units import parse_duration, parse_rate

__all__ = ["DURATION", "RATE", "REMOVE", "OrNone"]


class _Remove(Enum):
    REMOVE = "none"


REMOVE: Final = _Remove.REMOVE
"""What ``--slots none`` (and the like) converts to: remove this setting."""


class _Rate(click.ParamType):  # type: ignore[type-arg, unused-ignore]
    name = "rate"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return value
        try:
            return parse_rate(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Duration(click.ParamType):  # type: ignore[type-arg, unused-ignore]
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


RATE: Final = _Rate()
DURATION: Final = _Duration()


class OrNone(click.ParamType):  # type: ignore[type-arg, unused-ignore]
    """Another type's values, or ``none`` (converted to :data:`REMOVE`)."""

    def __init__(self, inner: click.ParamType) -> None:  # type: ignore[type-arg, unused-ignore]
        self.inner = inner
        self.name = f"{inner.name}|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is REMOVE or (isinstance(value, str) and value.strip().lower() == "none"):
            return REMOVE
        return self.inner.convert(value, param, ctx)
