"""Run history backends, chosen by the limits store's URL scheme and imported only when used.

History goes to the same store as the limits: ``sqlite:///path.db`` keeps it in
the same database file (its own tables), ``memory://NAME`` in this process.
Adding a backend is one entry in :data:`_BACKENDS` plus a module with a
``from_url(url) -> HistoryStore`` factory (see :mod:`sluice.history.base`).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import threading
from collections.abc import Callable
from pathlib import Path

from sluice.errors import ConfigError
from sluice.history.base import (
    FlowRunDetail,
    FlowRunRecord,
    HistoryRecord,
    HistoryStore,
    StateRecord,
    TaskRunDetail,
    TaskRunRecord,
)

__all__ = [
    "FlowRunDetail",
    "FlowRunRecord",
    "HistoryRecord",
    "HistoryStore",
    "StateRecord",
    "TaskRunDetail",
    "TaskRunRecord",
    "history_schemes",
    "open_history",
]

# scheme -> (module, factory name, pip extra or None)
_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("sluice.history.memory", "from_url", None),
    "sqlite": ("sluice.history.sqlite", "from_url", None),
    "redis": ("sluice.history.redis", "from_url", "redis"),
    "rediss": ("sluice.history.redis", "from_url", "redis"),
    "postgresql": ("sluice.history.postgres", "from_url", "postgres"),
    "postgres": ("sluice.history.postgres", "from_url", "postgres"),
}

_lock = threading.Lock()
_open: dict[str, HistoryStore] = {}


def history_schemes() -> list[str]:
    """The URL schemes whose stores keep run history."""
    return sorted(_BACKENDS)


def _key(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        rest = url[len("sqlite:///") :]
        if rest and rest != ":memory:":
            return f"sqlite:///{Path(rest).expanduser().resolve()}"
    return url


def open_history(url: str) -> HistoryStore:
    """The history store for a limits store URL, shared by every caller in this process."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"invalid store URL {url!r}: expected SCHEME://...")
    key = _key(url.strip())
    scheme = key.split("://", 1)[0].lower()
    with _lock:
        store = _open.get(key)
        if store is not None:
            return store
        if scheme not in _BACKENDS:
            raise ConfigError(
                f"the {scheme}:// store keeps no run history yet; stores with history: "
                + ", ".join(f"{s}://" for s in history_schemes())
                + " (or turn history off with SLUICE_HISTORY=0)"
            )
        module_name, attr, extra = _BACKENDS[scheme]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # pragma: no cover - depends on optional drivers
            hint = f"; install it with: pip install 'sluice[{extra}]'" if extra else ""
            raise ConfigError(f"run history on {scheme}:// needs a missing driver{hint}") from exc
        factory: Callable[[str], HistoryStore] = getattr(module, attr)
        store = _open[key] = factory(key)
        return store


@atexit.register
def _close_all() -> None:
    with _lock:
        stores = list(_open.values())
        _open.clear()
    for store in stores:
        with contextlib.suppress(Exception):  # best effort at exit
            store.close()
