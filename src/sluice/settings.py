"""Configuration, resolved in one place: explicit argument, environment, default.

========================  =====================================  ==========================
setting                   environment variable                   default
========================  =====================================  ==========================
store URL                 ``SLUICE_URL``                         ``sqlite:///<home>/sluice.db``
home directory            ``SLUICE_HOME``                        ``~/.sluice``
missing-limit policy      ``SLUICE_MISSING_LIMIT``               ``raise``
========================  =====================================  ==========================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sluice.errors import ConfigError
from sluice.limits.model import MissingPolicy

__all__ = ["ResolvedURL", "home_dir", "missing_policy", "resolve_url"]

Source = Literal["argument", "env", "default"]


@dataclass(frozen=True)
class ResolvedURL:
    """A store URL and where it came from."""

    url: str
    source: Source


def home_dir() -> Path:
    """Sluice's home directory: ``SLUICE_HOME`` or ``~/.sluice``."""
    raw = os.environ.get("SLUICE_HOME", "").strip()
    return Path(raw).expanduser() if raw else Path.home() / ".sluice"


def resolve_url(explicit: str | None = None) -> ResolvedURL:
    """The store URL: the argument, else ``SLUICE_URL``, else the SQLite file in home."""
    if explicit is not None:
        if not isinstance(explicit, str) or not explicit.strip():
            raise ConfigError(f"store URL must be a non-empty str, got {explicit!r}")
        return ResolvedURL(explicit.strip(), "argument")
    env = os.environ.get("SLUICE_URL", "").strip()
    if env:
        return ResolvedURL(env, "env")
    return ResolvedURL(f"sqlite:///{(home_dir() / 'sluice.db').resolve()}", "default")


def missing_policy(explicit: str | None = None) -> MissingPolicy:
    """The policy for acquiring limits that do not exist: raise, warn or ignore."""
    value = explicit if explicit is not None else os.environ.get("SLUICE_MISSING_LIMIT", "raise")
    value = value.strip().lower() if isinstance(value, str) else value
    if value not in ("raise", "warn", "ignore"):
        raise ConfigError(
            f"SLUICE_MISSING_LIMIT / missing= must be 'raise', 'warn' or 'ignore', got {value!r}"
        )
    return value  # type: ignore[return-value]
