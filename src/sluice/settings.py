"""Configuration, resolved in one place and in one order: flag or argument, environment
variable, configuration file, default.

* store URL: ``Limits(url)`` or ``--url``; ``SLUICE_URL``; ``url`` in the configuration
  file; ``sqlite:///<home>/sluice.db``.
* home directory: ``SLUICE_HOME``; ``~/.sluice``.
* missing-limit policy: ``missing=``; ``SLUICE_MISSING_LIMIT``; ``raise``.
* run history of flows on/off: ``SLUICE_HISTORY``; ``1`` (``0`` turns it off).
* flow runs kept in the history: ``SLUICE_HISTORY_KEEP``; ``1000``.
* age past which flow runs are pruned: ``SLUICE_HISTORY_MAX_AGE`` (seconds); none.
* progress bar while a flow runs on a terminal: ``SLUICE_PROGRESS``; ``1`` (``0``: never).
* seconds between heartbeats of a process writing run history (runs of a process gone
  end Crashed): ``SLUICE_HISTORY_HEARTBEAT``; ``5``.
* run logs printed on the console while flows run: ``SLUICE_LOG_CONSOLE``; ``1`` (``0``: never).

The configuration file is the nearest ``sluice.toml`` (its top level), or
``pyproject.toml`` with a ``[tool.sluice]`` table, in the current directory or one of
its parents (in one directory, ``sluice.toml`` wins). A file holds these keys::

    url = "sqlite:///var/sluice.db"     # relative SQLite paths are relative to the file

    [limits.client-invoices]            # declared limits, for `sluice limit apply`
    slots = 20
    rate = "10/s"

Any other key, or a value of the wrong type, is a :class:`~sluice.errors.ConfigError`
naming the file, the table and the key.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from sluice.errors import ConfigError

if TYPE_CHECKING:  # a runtime import would make sluice.flows -> settings -> limits circular
    from sluice.limits.model import MissingPolicy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "CONFIG_KEYS",
    "ConfigFile",
    "ResolvedURL",
    "find_config",
    "history_enabled",
    "history_heartbeat",
    "history_keep",
    "history_max_age",
    "home_dir",
    "load_config",
    "log_console",
    "missing_policy",
    "progress_enabled",
    "resolve_url",
    "unknown_key",
]

Source = Literal["argument", "env", "file", "default"]

CONFIG_KEYS: Final = ("url", "limits")
"""The keys a configuration file's settings table may hold."""


@dataclass(frozen=True)
class ConfigFile:
    """A Sluice configuration file: its path, the table Sluice reads, and that table."""

    path: Path
    table: str
    """Where Sluice's settings are in the file: "" (top level) or "tool.sluice"."""
    settings: Mapping[str, Any]

    def where(self, *keys: str) -> str:
        """Name a table of this file for messages: ``path [tool.sluice.limits.db]``."""
        parts = [p for p in (self.table, *keys) if p]
        return f"{self.path} [{'.'.join(parts)}]" if parts else str(self.path)

    @property
    def url(self) -> str | None:
        """The file's store URL, SQLite paths made absolute against the file's directory."""
        value = self.settings.get("url")
        if value is None:
            return None
        rest = value[len("sqlite:///") :] if value.startswith("sqlite:///") else None
        if rest and not rest.startswith(("/", "~")) and rest != ":memory:":
            return f"sqlite:///{(self.path.parent / rest).resolve()}"
        return str(value)


@dataclass(frozen=True)
class ResolvedURL:
    """A store URL and where it came from (``file``: the configuration file it came from)."""

    url: str
    source: Source
    file: Path | None = None


def home_dir() -> Path:
    """Sluice's home directory: ``SLUICE_HOME`` or ``~/.sluice``."""
    raw = os.environ.get("SLUICE_HOME", "").strip()
    return Path(raw).expanduser() if raw else Path.home() / ".sluice"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {path}: not UTF-8 text ({exc.reason})") from exc
    try:
        document: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}; fix the file") from exc
    return document


def load_config(path: Path | str) -> ConfigFile:
    """Read a configuration file: a ``pyproject.toml`` by its ``[tool.sluice]`` table,
    any other file by its top level."""
    path = Path(path).absolute()
    document = _read_toml(path)
    if path.name == "pyproject.toml":
        tool = document.get("tool", {})
        settings = tool.get("sluice", {}) if isinstance(tool, dict) else {}
        if not isinstance(settings, dict):
            raise ConfigError(f"{path} [tool.sluice] must be a table, got {settings!r}")
        config = ConfigFile(path, "tool.sluice", settings)
    else:
        config = ConfigFile(path, "", document)
    _check(config)
    return config


def _check(config: ConfigFile) -> None:
    for key, value in config.settings.items():
        if key not in CONFIG_KEYS:
            raise ConfigError(f"{config.where()}: {unknown_key(key, CONFIG_KEYS)}")
        if key == "url" and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{config.where()}: url must be a non-empty string, got {value!r}")
        if key == "limits" and not isinstance(value, dict):
            raise ConfigError(
                f"{config.where()}: limits must be a table of [limits.NAME] tables, got {value!r}"
            )


def unknown_key(key: str, known: tuple[str, ...]) -> str:
    """``unknown key 'slot' (did you mean 'slots'?); known keys: ...``."""
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}; known keys: {', '.join(known)}"


def find_config(start: Path | str | None = None) -> ConfigFile | None:
    """The nearest ``sluice.toml``, or ``pyproject.toml`` with ``[tool.sluice]``, in
    ``start`` (default: the current directory) or one of its parents."""
    here = Path(start if start is not None else Path.cwd()).absolute()
    for directory in (here, *here.parents):
        candidate = directory / "sluice.toml"
        if candidate.is_file():
            return load_config(candidate)
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            tool = _read_toml(candidate).get("tool")
            if isinstance(tool, dict) and "sluice" in tool:
                return load_config(candidate)
    return None


def resolve_url(explicit: str | None = None, *, config: ConfigFile | None = None) -> ResolvedURL:
    """The store URL: the argument, else ``SLUICE_URL``, else the configuration file's
    ``url`` (``config``, or the nearest file found), else the SQLite file in home."""
    if explicit is not None:
        if not isinstance(explicit, str) or not explicit.strip():
            raise ConfigError(f"store URL must be a non-empty str, got {explicit!r}")
        return ResolvedURL(explicit.strip(), "argument")
    env = os.environ.get("SLUICE_URL", "").strip()
    if env:
        return ResolvedURL(env, "env")
    found = config if config is not None else find_config()
    if found is not None and found.url is not None:
        return ResolvedURL(found.url.strip(), "file", found.path)
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


def history_heartbeat() -> float:
    """Seconds between run-history heartbeats: ``SLUICE_HISTORY_HEARTBEAT`` (default 5)."""
    raw = os.environ.get("SLUICE_HISTORY_HEARTBEAT", "").strip()
    if not raw:
        return 5.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.05 <= value <= 3600:
        raise ConfigError(
            f"SLUICE_HISTORY_HEARTBEAT must be seconds from 0.05 to 3600, got {raw!r}"
        )
    return value


def log_console() -> bool:
    """Whether run logs are printed on the console: ``SLUICE_LOG_CONSOLE`` (default 1)."""
    return _flag("SLUICE_LOG_CONSOLE", True)


def progress_enabled() -> bool:
    """Whether flows may show a progress bar on a terminal: ``SLUICE_PROGRESS`` (default 1)."""
    return _flag("SLUICE_PROGRESS", True)
