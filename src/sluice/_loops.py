"""Callbacks handed to an event loop from other threads, many per wake-up of the loop.

``loop.call_soon_threadsafe`` writes to the loop's self-pipe for every call. When
thousands of task runs are granted or finish within a millisecond, :func:`post`
queues the callbacks and wakes the loop once: the first post after the loop
drained its inbox schedules the drain, the others only append.

New work (:func:`post_new`: starting a task run) waits behind everything else: each
drain runs every other callback first, then starts at most :data:`NEW_PER_ROUND` new
items, and drains again after the loop has run what those started. So ten thousand
task runs submitted at once never hold up the end of one that is running (its
release, the next grant) for longer than one round.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["NEW_PER_ROUND", "pending_new", "post", "post_new"]

NEW_PER_ROUND = 64
"""New items a drain starts before the loop runs what is ready (see the module docstring)."""


class _Inbox:
    """One loop's queue of callbacks from other threads."""

    __slots__ = ("_items", "_lock", "_loop", "_new", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._new: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, callback: Callable[..., Any], args: tuple[Any, ...], new: bool) -> None:
        with self._lock:
            (self._new if new else self._items).append((callback, args))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop has closed: nobody is left to call back
            with self._lock:
                self._items.clear()
                self._new.clear()
                self._scheduled = False

    @property
    def pending_new(self) -> bool:
        return bool(self._new)

    def _drain(self) -> None:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            for _ in range(min(NEW_PER_ROUND, len(self._new))):
                items.append(self._new.popleft())
            more = bool(self._new)
            self._scheduled = more
        if more:  # after what the new items start (they are scheduled as they start)
            self._loop.call_soon(self._drain)
        for callback, args in items:
            try:
                callback(*args)
            except Exception as exc:  # one failing callback stops no other
                self._loop.call_exception_handler(
                    {"message": f"callback {callback!r} failed", "exception": exc}
                )


_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _inbox(loop: asyncio.AbstractEventLoop) -> _Inbox:
    inbox = _inboxes.get(loop)
    if inbox is None:
        with _lock:
            inbox = _inboxes.get(loop)
            if inbox is None:
                inbox = _inboxes[loop] = _Inbox(loop)
    return inbox


def post(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """Call ``callback(*args)`` soon on ``loop``, from any thread (nothing if it closed)."""
    _inbox(loop).post(callback, args, False)


def post_new(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """Like :func:`post`, for new work: called after every callback posted before the
    drain, at most :data:`NEW_PER_ROUND` per round, in the order posted."""
    _inbox(loop).post(callback, args, True)


def pending_new(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether new work posted to ``loop`` waits to be called."""
    inbox = _inboxes.get(loop)
    return inbox is not None and inbox.pending_new
