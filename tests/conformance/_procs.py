"""Starting, pausing and killing child processes for the cross-process tests."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from sluice import Limits

SPAWN = multiprocessing.get_context("spawn")
CHILD_START = 30.0
"""Seconds a spawned child may take to import sluice and report in (slow CI boxes)."""


@contextmanager
def child(target: Callable[..., None], *args: Any) -> Iterator[Any]:
    """Run ``target(*args)`` in a spawned process; kill it on the way out if still alive."""
    proc = SPAWN.Process(target=target, args=args, daemon=True)
    proc.start()
    pid = proc.pid
    assert pid is not None  # a started process has one
    try:
        yield proc
    finally:
        if proc.is_alive():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            proc.kill()
        proc.join(10)


def expect(results: Any, kind: str, timeout: float = CHILD_START) -> tuple[Any, ...]:
    """The next message from a child, which must be of ``kind``."""
    try:
        message: tuple[Any, ...] = results.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no {kind!r} message from the child within {timeout}s") from None
    assert message[0] == kind, f"expected {kind!r}, got {message!r}"
    return message


def stop_between_store_steps(proc: Any, limits: Limits, probe: str) -> None:
    """SIGSTOP ``proc``, making sure it was not frozen inside a store step.

    A process frozen mid-transaction would hold the store's write lock; that is
    a different failure from the one under test, so check that the store still
    takes writes (``probe`` must be a free limit) and retry the stop otherwise.
    """
    for _ in range(10):
        os.kill(proc.pid, signal.SIGSTOP)
        done = threading.Event()

        def write(done: threading.Event = done) -> None:
            limits.acquire(probe, timeout=0).release()
            done.set()

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        if done.wait(1.0):
            return
        os.kill(proc.pid, signal.SIGCONT)
        writer.join(10)
    raise AssertionError("could not stop the child outside a store step in 10 tries")
