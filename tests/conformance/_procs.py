"""Starting, pausing and killing child processes for the cross-process tests."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from sluice import Limits
from sluice.errors import AcquireTimeout, StoreUnavailable

from . import _workers

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


def stop_between_store_steps(proc: Any, limits: Limits, probe: str) -> float:
    """SIGSTOP ``proc``, making sure it was not frozen inside a store step; return
    ``time.monotonic()`` just before the stop that held.

    A process frozen mid-transaction would hold the store's write lock; that is
    a different failure from the one under test, so check that the store still
    takes writes (``probe`` must be a free limit) and retry the stop otherwise.
    """
    for _ in range(10):
        stopped_at = time.monotonic()
        os.kill(proc.pid, signal.SIGSTOP)
        done = threading.Event()

        def write(done: threading.Event = done) -> None:
            try:
                limits.acquire(probe, timeout=0).release()
            except (AcquireTimeout, StoreUnavailable):
                return  # the stopped child holds the write lock: stop it again
            done.set()

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        if done.wait(1.0):
            return stopped_at
        os.kill(proc.pid, signal.SIGCONT)
        writer.join(10)
    raise AssertionError("could not stop the child outside a store step in 10 tries")


@dataclass
class HungHolder:
    """A live child process that holds a lease but is frozen (SIGSTOP): it never renews."""

    proc: Any
    pid: int
    lease_id: str
    stopped_at: float
    """``time.monotonic()`` once it was stopped (its last renewal was before)."""
    results: Any
    go: Any

    def thaw_and_leave(self, timeout: float = 20.0) -> tuple[Any, ...]:
        """SIGCONT the child and let it leave its with block; return what it reported:
        ("lease-lost", lease.lost, lease id, names, how a second release went), or
        ("no-error", lease.lost, ...) if it never learned its lease was gone."""
        os.kill(self.pid, signal.SIGCONT)
        self.go.set()
        try:
            outcome: tuple[Any, ...] = self.results.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the thawed holder said nothing in {timeout}s") from None
        self.proc.join(timeout)
        assert self.proc.exitcode == 0, f"the thawed holder exited with {self.proc.exitcode}"
        return outcome


@contextmanager
def hung_holder(
    limits: Limits,
    url: str,
    names: list[str],
    occupy: int = 1,
    probe: str = "hung-holder-probe",
    holder: str = "hung",
) -> Iterator[HungHolder]:
    """A real hung holder: a child process takes ``occupy`` of ``names`` in a with block,
    then is frozen with SIGSTOP between store steps. It is alive (no store sees it die)
    but renews nothing, so its lease lapses after its TTL. On the way out it is
    resumed and killed, whatever happened.

    ``probe`` is a free limit used to check the child was not frozen inside a store
    step (created here if missing); ``url`` must name a store shared across processes.
    """
    limits.ensure(probe, slots=1)
    results = SPAWN.Queue()
    go = SPAWN.Event()
    with child(_workers.hold_until_told, url, names, occupy, results, go, holder) as proc:
        _, pid, lease_id = expect(results, "held")
        stopped_at = stop_between_store_steps(proc, limits, probe)
        yield HungHolder(proc, pid, lease_id, stopped_at, results, go)
