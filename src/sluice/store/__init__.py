"""Store backends, chosen by URL scheme and imported only when used."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from sluice.errors import ConfigError
from sluice.store.base import AsyncStore, Store, StoreDiagnosis, ThreadedAsyncStore, WakeHandler

__all__ = [
    "AsyncStore",
    "Store",
    "StoreDiagnosis",
    "ThreadedAsyncStore",
    "WakeHandler",
    "acquire_store",
    "known_schemes",
    "redact_url",
    "release_store",
]

# scheme -> (module, factory name, pip extra or None)
_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("sluice.store.memory", "from_url", None),
    "sqlite": ("sluice.store.sqlite", "from_url", None),
    "redis": ("sluice.store.redis", "from_url", "redis"),
    "rediss": ("sluice.store.redis", "from_url", "redis"),
    "postgresql": ("sluice.store.postgres", "from_url", "postgres"),
    "postgres": ("sluice.store.postgres", "from_url", "postgres"),
}

_lock = threading.Lock()
_open: dict[str, tuple[Store, int]] = {}


def known_schemes() -> list[str]:
    """The URL schemes a store can be opened with."""
    return sorted(_BACKENDS)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe for logs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


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


def _canonical(url: str) -> str:
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"invalid store URL {url!r}: expected SCHEME://..., one of "
            + ", ".join(f"{s}://" for s in known_schemes())
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme not in _BACKENDS:
        raise ConfigError(
            f"unknown store scheme {scheme!r} in {redact_url(url)!r}; known schemes: "
            + ", ".join(f"{s}://" for s in known_schemes())
        )
    if scheme == "sqlite":
        return f"sqlite:///{_sqlite_path(url)}"
    return url


def _factory(url: str) -> Callable[[str], Store]:
    scheme = url.split("://", 1)[0].lower()
    module_name, attr, extra = _BACKENDS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # pragma: no cover - depends on optional drivers
        hint = f"; install it with: pip install 'sluice[{extra}]'" if extra else ""
        raise ConfigError(
            f"the {scheme}:// store ({redact_url(url)}) needs a driver that is missing{hint}"
        ) from exc
    factory: Callable[[str], Store] = getattr(module, attr)
    return factory


def acquire_store(url: str) -> Store:
    """Open the store for ``url``, shared by every user in this process (reference-counted)."""
    key = _canonical(url)
    with _lock:
        entry = _open.get(key)
        if entry is not None and getattr(entry[0], "closed", False):
            entry = None
        if entry is None:
            store = _factory(key)(key)
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


@atexit.register
def _close_all() -> None:
    # Give this process's leases and tickets back at once on a normal exit.
    with _lock:
        stores = [s for s, _ in _open.values()]
        _open.clear()
    for store in stores:
        with contextlib.suppress(Exception):  # best effort at exit
            store.close()


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
