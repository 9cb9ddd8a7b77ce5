"""One way to survive ``fork()``: callbacks run in the child, before any other code.

A forked child shares nothing useful with its parent's threads, locks,
connections or identity. Every module or object that holds such state
registers here; its callback runs in the child right after the fork (through
``os.register_at_fork``), so no code path needs to compare PIDs.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["after_fork_in_child", "keep_unclosed", "track", "untrack"]

_T = TypeVar("_T")
_callbacks: list[Callable[[], None]] = []
_owners: weakref.WeakKeyDictionary[Any, list[Callable[[Any], None]]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_unclosed: list[object] = []


def keep_unclosed(*objects: object) -> None:
    """In a forked child: keep the parent's connections and files referenced, never closed.

    Closing them here could disturb the parent (a SQLite connection closed in the
    child may checkpoint or delete the WAL the parent still uses).
    """
    _unclosed.extend(o for o in objects if o is not None)


def after_fork_in_child(callback: Callable[[], None]) -> None:
    """Run ``callback`` in the child after every fork (module-level state)."""
    with _lock:
        _callbacks.append(callback)


def track(owner: _T, reset: Callable[[_T], None]) -> None:
    """Run ``reset(owner)`` in the child after every fork, for as long as ``owner`` lives."""
    with _lock:
        _owners.setdefault(owner, []).append(reset)


def untrack(owner: object) -> None:
    """Stop resetting ``owner`` after forks (it was closed: its descriptors are gone)."""
    with _lock:
        _owners.pop(owner, None)


def _run_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    for callback in list(_callbacks):
        callback()
    for owner, resets in list(_owners.items()):
        for reset in resets:
            reset(owner)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_run_in_child)
