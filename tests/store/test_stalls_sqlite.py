"""SQLite: a process paused (SIGSTOP) inside a write transaction (issue 14, item 1).

It keeps the write lock while it is stopped. Every call still returns within its
bound (a timeout plus TIMEOUT_GRACE, else the per-step deadline), reads and the CLI
answer at once (WAL read transactions), and a stall longer than ``lease_ttl`` costs no
live holder its lease: a waiter is never let in while the holder is still inside.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conformance._helpers import Attempt, child_env, stays, wait_for_waiters, wait_until
from sluice import Limits, aio
from sluice.errors import AcquireTimeout, StoreUnavailable
from sluice.limits.waiting import TIMEOUT_GRACE
from sluice.store.deadline import ENV_STEP_TIMEOUT
from sluice.store.sqlite.ipc import write_lock_path

STEP = 1.0
"""The per-step deadline these tests run with (SLUICE_STEP_TIMEOUT)."""
SLACK = 0.4
"""Seconds of scheduling noise allowed on top of a documented bound."""
NO_TIMEOUT_BOUND = 2 * STEP + TIMEOUT_GRACE + SLACK
"""A call without a timeout: a round already under way, then its own, each a step."""
ALL_CALLS_BOUND = 2 * (1 + TIMEOUT_GRACE + TIMEOUT_GRACE + NO_TIMEOUT_BOUND) + 5
"""Seconds all the acquire calls made during a stall may take together."""
CLI_BOUND = 15.0
"""Seconds a CLI run (a fresh interpreter importing sluice) may take; on the old code
it waited for the write lock without bound."""

_HOLDER = """
import fcntl, os, sqlite3, sys, time
if sys.argv[2] == "sluice":  # as a Sluice process inside its write step: both locks
    fd = os.open(sys.argv[3], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("in", flush=True)
sys.stdin.read()  # until the test lets it go
"""


@pytest.fixture(autouse=True)
def _short_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_STEP_TIMEOUT, str(STEP))


@contextmanager
def paused_writer(db: Path, kind: str) -> Iterator[subprocess.Popen[str]]:
    """A child process inside a write transaction on ``db``, stopped with SIGSTOP;
    thawed and ended on the way out, whatever happened."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(db), kind, str(write_lock_path(str(db)))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "in", "the writer never got the lock"
        proc.send_signal(signal.SIGSTOP)
        yield proc
    finally:
        proc.send_signal(signal.SIGCONT)
        try:  # thawed, it ends its transaction (rolled back) and exits
            proc.communicate(input="", timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)


def timed(call: Callable[[], Any]) -> tuple[BaseException | None, float]:
    """What ``call()`` raised (None: it returned) and how long it took."""
    started = time.monotonic()
    try:
        call()
    except BaseException as exc:  # asserted by the caller
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def bounded(
    results: dict[str, tuple[BaseException | None, float]], name: str, bound: float
) -> None:
    error, took = results[name]
    # without a timeout, only the step deadline can end the call
    expected = (AcquireTimeout, StoreUnavailable) if "timeout=" in name else (StoreUnavailable,)
    assert isinstance(error, expected), f"{name}: {error!r}"
    assert took <= bound, f"{name} took {took:.2f} s, over its bound of {bound:.2f} s"


def _calls_during_a_stall(
    url: str, limits: Limits, with_async: bool
) -> dict[str, tuple[BaseException | None, float]]:
    """Every kind of acquire, sync (and async), on a slots=1 limit whose only slot is held."""
    results = {
        "acquire(timeout=1)": timed(lambda: limits.acquire("db", timeout=1)),
        "acquire(timeout=0)": timed(lambda: limits.acquire("db", timeout=0)),
        "acquire()": timed(lambda: limits.acquire("db")),
    }

    async def calls() -> None:
        async with aio.Limits(url) as alimits:
            for label, timeout in (("1", 1.0), ("0", 0.0), ("", None)):
                started = time.monotonic()
                try:
                    await alimits.acquire("db", timeout=timeout)
                except BaseException as exc:  # asserted by the caller
                    error: BaseException | None = exc
                else:
                    error = None
                took = time.monotonic() - started
                results[f"async acquire({'timeout=' + label if label else ''})"] = (error, took)

    if with_async:
        asyncio.run(calls())
    return results


@pytest.mark.parametrize("kind", ["sluice", "sqlite"], ids=["sluice-step", "other-connection"])
def test_calls_reads_and_the_cli_stay_bounded_while_a_paused_process_holds_the_write_lock(
    tmp_path: Path, kind: str
) -> None:
    db = tmp_path / "sluice.db"
    url = f"sqlite:///{db}"
    with Limits(url) as limits:
        limits.create("db", slots=1)
        held = limits.acquire("db")
        with paused_writer(db, kind):
            results: dict[str, tuple[BaseException | None, float]] = {}
            runner = threading.Thread(
                target=lambda: results.update(_calls_during_a_stall(url, limits, kind == "sluice")),
                daemon=True,
            )
            runner.start()  # on a thread: a call that waits for the lock fails the test
            runner.join(ALL_CALLS_BOUND)
            assert not runner.is_alive(), f"calls still waiting after {ALL_CALLS_BOUND:g} s"
            read = timed(lambda: limits.inspect("db"))
            status = limits.inspect("db")
            cli_started = time.monotonic()
            try:
                ls = subprocess.run(
                    [sys.executable, "-m", "sluice", "limit", "ls", "--url", url],
                    capture_output=True,
                    text=True,
                    timeout=CLI_BOUND,
                    env=child_env(),
                )
                inspect = subprocess.run(
                    [sys.executable, "-m", "sluice", "limit", "inspect", "db", "--url", url],
                    capture_output=True,
                    text=True,
                    timeout=CLI_BOUND,
                    env=child_env(),
                )
            except subprocess.TimeoutExpired as exc:
                pytest.fail(f"the CLI waited for the paused writer: {exc}")
            cli_took = time.monotonic() - cli_started
        # and once it goes, everything works again
        assert not held.lost
        held.release()
        limits.acquire("db", timeout=STEP).release()
    bounded(results, "acquire(timeout=1)", 1 + TIMEOUT_GRACE + SLACK)
    bounded(results, "acquire(timeout=0)", TIMEOUT_GRACE + SLACK)
    bounded(results, "acquire()", NO_TIMEOUT_BOUND)
    if kind == "sluice":  # (async calls wait the same way, whoever holds the lock)
        bounded(results, "async acquire(timeout=1)", 1 + TIMEOUT_GRACE + SLACK)
        bounded(results, "async acquire(timeout=0)", TIMEOUT_GRACE + SLACK)
        bounded(results, "async acquire()", NO_TIMEOUT_BOUND)
    assert read[0] is None and read[1] < 0.5, read  # a read never waits for the lock
    assert (status.in_use, [h.lease_id for h in status.holders]) == (1, [held.id])
    assert ls.returncode == 0, ls.stderr
    assert "1/1" in ls.stdout.splitlines()[1], ls.stdout
    assert inspect.returncode == 0, inspect.stderr
    assert held.id in inspect.stdout, inspect.stdout
    assert cli_took < CLI_BOUND


def test_a_stall_longer_than_the_lease_ttl_takes_no_live_holders_lease(tmp_path: Path) -> None:
    """The issue's case: slots=1, lease_ttl 1 s, a stall of 3 s. The healthy holder keeps
    its lease (its renewals failed only because nobody could write), the waiter that
    queued before the stall is not let in while the holder is inside, and gets the slot
    once the holder leaves."""
    db = tmp_path / "sluice.db"
    url = f"sqlite:///{db}"
    with Limits(url) as limits, Limits(url) as other:
        limits.create("db", slots=1, lease_ttl=1)
        held = limits.acquire("db")
        waiter = Attempt(other, "db", timeout=30).start()
        wait_for_waiters(limits, "db", 1)
        with paused_writer(db, "sluice"):
            stays(
                lambda: not waiter.done.is_set() and not held.lost,
                3.0,  # the stall: three lease TTLs
                "the holder keeps its lease, the waiter stays out, during the stall",
            )
            # doctor does not count the live holder's lease as expired either
            assert limits._store.diagnose().expired_leases == 0
        # The paused process is gone: the store takes writes again.
        stays(
            lambda: not waiter.done.is_set() and not held.lost,
            1.5,  # every process has had its next step by then (renewals every 1/3 s)
            "the holder keeps its lease, the waiter stays out, after the stall",
        )
        status = limits.inspect("db")
        assert [h.lease_id for h in status.holders] == [held.id]
        assert len(status.waiters) == 1
        released_at = time.monotonic()
        held.release()  # no LeaseLost: it never lost the lease
        lease = waiter.result(timeout=5)
        assert waiter.granted_at is not None and waiter.granted_at >= released_at
        lease.release()
        wait_until(lambda: limits.inspect("db").in_use == 0, 5, "the limit to be free")
