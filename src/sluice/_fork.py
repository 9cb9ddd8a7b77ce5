"""One way to survive ``fork()``: callbacks run in the child, before any other code.

A forked child shares nothing useful with its parent's threads, locks,
connections or identity. Every object that holds such state registers a
callback here; it runs in the child right after the fork (through
``os.register_at_fork``), so no code path needs to compare PIDs.
"""

from __future__ import annotations

import os
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["after_fork_in_child", "forget"]

_callbacks: list[Callable[[], None]] = []
_methods: weakref.WeakKeyDictionary[Any, list[Callable[[Any], None]]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def after_fork_in_child(callback: Callable[[], None], owner: Any = None) -> None:
    """Run ``callback`` in the child after every fork.

    With ``owner``, ``callback`` must be a method of it: the owner is held
    weakly and the callback stops once the owner is collected.
    """
    with _lock:
        if owner is None:
            _callbacks.append(callback)
        else:
            function: Callable[[Any], None] = callback.__func__
            _methods.setdefault(owner, []).append(function)


def forget(owner: Any) -> None:
    """Stop running an owner's callbacks (it was closed)."""
    with _lock:
        _methods.pop(owner, None)


def _run_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    for callback in list(_callbacks):
        callback()
    for owner, functions in list(_methods.items()):
        for function in functions:
            function(owner)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_run_in_child)
