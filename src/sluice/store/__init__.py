"""Store backends, chosen by URL scheme from one table and imported only when used.

Each backend is a package (:mod:`sluice.store.sqlite`, :mod:`sluice.store.redis`,
:mod:`sluice.store.postgres`) holding its limits store and its run history, so a
URL names both: ``acquire_store(url)`` for the limits, ``open_history(url)`` for
the runs. Adding a backend is one :class:`Backend` row in :data:`BACKENDS`.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice import _fork
from sluice._urls import redact_url
from sluice.errors import ConfigError
from sluice.store.base import AsyncStore, Store, StoreDiagnosis, ThreadedAsyncStore, WakeHandler
from sluice.store.history import HistoryStore

__all__ = [
    "BACKENDS",
    "AsyncStore",
    "Backend",
    "HistoryStore",
    "Store",
    "StoreDiagnosis",
    "ThreadedAsyncStore",
    "WakeHandler",
    "acquire_store",
    "canonical_url",
    "known_schemes",
    "open_history",
    "redact_url",
    "release_store",
]


@dataclass(frozen=True)
class Backend:
    """Where one URL scheme's store and run history live (``module:function`` each)."""

    store: str
    history: str
    extra: str | None = None
    """The pip extra that installs the backend's driver (``sluice[redis]``), if any."""


BACKENDS: dict[str, Backend] = {
    "memory": Backend(
        "sluice.store.sqlite.memory:from_url", "sluice.store.sqlite.memory:history_from_url"
    ),
    "sqlite": Backend("sluice.store.sqlite.store:from_url", "sluice.store.sqlite.history:from_url"),
    "redis": Backend(
        "sluice.store.redis.store:from_url", "sluice.store.redis.history:from_url", "redis"
    ),
    "rediss": Backend(
        "sluice.store.redis.store:from_url", "sluice.store.redis.history:from_url", "redis"
    ),
    "postgresql": Backend(
        "sluice.store.postgres.store:from_url",
        "sluice.store.postgres.history:from_url",
        "postgres",
    ),
    "postgres": Backend(
        "sluice.store.postgres.store:from_url",
        "sluice.store.postgres.history:from_url",
        "postgres",
    ),
}

_lock = threading.Lock()
_open: dict[str, tuple[Store, int]] = {}
_histories: dict[str, HistoryStore] = {}


def known_schemes() -> list[str]:
    """The URL schemes a store can be opened with."""
    return sorted(BACKENDS)


def _sqlite_path(url: str) -> str:
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise ConfigError(
            f"invalid SQLite URL {url!r}: use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    path = rest[1:]
    if path in ("", ":memory:"):
        raise ConfigError(f"invalid SQLite URL {url!r}: give a file path (or use memory://)")
    return str(Path(path).expanduser().resolve())


def canonical_url(url: object) -> str:
    """The URL a store is known by in this process (SQLite paths made absolute).

    Raises ConfigError, naming the known schemes, for anything that is not a
    store URL.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"invalid store URL {url!r}: expected SCHEME://..., one of "
            + ", ".join(f"{s}://" for s in known_schemes())
        )
    url = url.strip()
    scheme = url.split("://", 1)[0].lower()
    if scheme not in BACKENDS:
        raise ConfigError(
            f"unknown store scheme {scheme!r} in {redact_url(url)!r}; known schemes: "
            + ", ".join(f"{s}://" for s in known_schemes())
        )
    if scheme == "sqlite":
        return f"sqlite:///{_sqlite_path(url)}"
    return url


def _factory(url: str, which: str) -> Callable[[str], Any]:
    scheme = url.split("://", 1)[0].lower()
    backend = BACKENDS[scheme]
    module_name, attr = getattr(backend, which).split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # pragma: no cover - depends on optional drivers
        hint = f"; install it with: pip install 'sluice[{backend.extra}]'" if backend.extra else ""
        raise ConfigError(
            f"the {scheme}:// store ({redact_url(url)}) needs a driver that is missing{hint}"
        ) from exc
    factory: Callable[[str], Any] = getattr(module, attr)
    return factory


def acquire_store(url: str) -> Store:
    """Open the store for ``url``, shared by every user in this process (reference-counted)."""
    key = canonical_url(url)
    with _lock:
        entry = _open.get(key)
        if entry is not None and getattr(entry[0], "closed", False):
            entry = None
        if entry is None:
            store: Store = _factory(key, "store")(key)
            _open[key] = (store, 1)
            return store
        _open[key] = (entry[0], entry[1] + 1)
        return entry[0]


def release_store(store: Store) -> bool:
    """Drop one reference to a shared store, closing it with the last one (returns True).

    Memory stores stay open for the life of the process, so their limits
    outlive any one ``Limits`` object, as a ``memory://`` URL promises.
    """
    with _lock:
        for key, (held, count) in list(_open.items()):
            if held is store:
                if count > 1:
                    _open[key] = (held, count - 1)
                    return False
                if key.startswith("memory:"):
                    _open[key] = (held, 0)
                    return False
                del _open[key]
                break
        else:
            return False
    store.close()
    return True


def open_history(url: str) -> HistoryStore:
    """The run-history store of a store URL, shared by every caller in this process."""
    key = canonical_url(url)
    with _lock:
        history = _histories.get(key)
        if history is None:
            history = _histories[key] = _factory(key, "history")(key)
        return history


@atexit.register
def _close_all() -> None:
    # Give this process's leases and tickets back at once on a normal exit.
    with _lock:
        stores = [s for s, _ in _open.values()]
        histories = list(_histories.values())
        _open.clear()
        _histories.clear()
    closers = [s.close for s in stores] + [h.close for h in histories]
    for close in closers:
        with contextlib.suppress(Exception):  # best effort at exit
            close()


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()


_fork.after_fork_in_child(_reset_after_fork)
