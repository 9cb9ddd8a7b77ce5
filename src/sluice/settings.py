"""Configuration, resolved in one place: explicit argument, environment, default.

========================  =====================================  ==========================
setting                   environment variable                   default
========================  =====================================  ==========================
store URL                 ``SLUICE_URL``                         ``sqlite:///<home>/sluice.db``
home directory            ``SLUICE_HOME``                        ``~/.sluice``
missing-limit policy      ``SLUICE_MISSING_LIMIT``               ``raise``
run history on/off        ``SLUICE_HISTORY``                     ``1`` (``0``: off)
flow runs kept            ``SLUICE_HISTORY_KEEP``                ``1000``
max age of kept runs      ``SLUICE_HISTORY_MAX_AGE``             none (seconds)
progress bar on a tty     ``SLUICE_PROGRESS``                    ``1`` (``0``: never)
========================  =====================================  ==========================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sluice.errors import ConfigError

if TYPE_CHECKING:  # a runtime import would make sluice.flows -> settings -> limits circular
    from sluice.limits.model import MissingPolicy

__all__ = [
    "ResolvedURL",
    "history_enabled",
    "history_keep",
    "history_max_age",
    "home_dir",
    "missing_policy",
    "progress_enabled",
    "resolve_url",
]

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


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0 (true/false, yes/no, on/off), got {raw!r}")


def history_enabled() -> bool:
    """Whether flows record run history: ``SLUICE_HISTORY`` (default 1; 0 turns it off)."""
    return _flag("SLUICE_HISTORY", True)


def history_keep() -> int:
    """Flow runs kept in the history: ``SLUICE_HISTORY_KEEP`` (default 1000)."""
    raw = os.environ.get("SLUICE_HISTORY_KEEP", "").strip()
    if not raw:
        return 1000
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 1:
        raise ConfigError(f"SLUICE_HISTORY_KEEP must be an int >= 1 (runs to keep), got {raw!r}")
    return value


def history_max_age() -> float | None:
    """Age in seconds past which runs are pruned: ``SLUICE_HISTORY_MAX_AGE`` (default none)."""
    raw = os.environ.get("SLUICE_HISTORY_MAX_AGE", "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"SLUICE_HISTORY_MAX_AGE must be seconds > 0, got {raw!r}")
    return value


def progress_enabled() -> bool:
    """Whether flows may show a progress bar on a terminal: ``SLUICE_PROGRESS`` (default 1)."""
    return _flag("SLUICE_PROGRESS", True)
