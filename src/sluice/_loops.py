"""Callbacks handed to an event loop from other threads, many per wake-up of the loop.

``loop.call_soon_threadsafe`` writes to the loop's self-pipe for every call. When
thousands of task runs are granted or finish within a millisecond, :func:`post`
queues the callbacks and wakes the loop once: the first post after the loop
drained its inbox schedules the drain, the others only append.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["post"]


class _Inbox:
    """One loop's queue of callbacks from other threads."""

    __slots__ = ("_items", "_lock", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        with self._lock:
            self._items.append((callback, args))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop has closed: nobody is left to call back
            with self._lock:
                self._items.clear()
                self._scheduled = False

    def _drain(self) -> None:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._scheduled = False
        for callback, args in items:
            try:
                callback(*args)
            except Exception as exc:  # one failing callback stops no other
                self._loop.call_exception_handler(
                    {"message": f"callback {callback!r} failed", "exception": exc}
                )


_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def post(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """Call ``callback(*args)`` soon on ``loop``, from any thread (nothing if it closed)."""
    inbox = _inboxes.get(loop)
    if inbox is None:
        with _lock:
            inbox = _inboxes.get(loop)
            if inbox is None:
                inbox = _inboxes[loop] = _Inbox(loop)
    inbox.post(callback, args)
