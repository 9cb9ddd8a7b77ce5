"""Helpers shared by the conformance tests: waiting threads, snapshots and invariant checkers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sluice
from sluice import Lease, Limits, LimitStatus

T = TypeVar("T")

WAKE_BOUND = 0.5
"""Seconds within which a pushed wake-up must let a waiter through.

Generous for a notification (milliseconds), yet below the 1 s minimum of the
safety re-check, so an implementation that merely re-polls cannot pass: tests
trigger the change right after seeing the waiter queued.
"""

STEP_TIMEOUT = 10.0
"""Timeout given to acquisitions in helper threads, so a bug fails instead of hanging."""


def wait_until(probe: Callable[[], T | None], timeout: float = 5.0, what: str = "a condition") -> T:
    """Call ``probe`` every few ms until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}; last value: {value!r}")
        time.sleep(0.005)


def wait_for_waiters(limits: Limits, name: str, count: int, timeout: float = 5.0) -> LimitStatus:
    """Wait until ``inspect(name)`` shows at least ``count`` waiters; return that status."""

    def probe() -> LimitStatus | None:
        status = limits.inspect(name)
        return status if len(status.waiters) >= count else None

    return wait_until(probe, timeout, f"{count} waiter(s) on {name!r}")


def wait_for_idle(limits: Limits, name: str, timeout: float = 3.0) -> LimitStatus:
    """Wait until ``name`` has no units in use and nobody waiting; return that status."""

    def probe() -> LimitStatus | None:
        status = limits.inspect(name)
        return status if status.in_use == 0 and not status.waiters else None

    return wait_until(probe, timeout, f"{name!r} to have in_use 0 and no waiters")


def snapshot(limits: Limits, *names: str) -> list[tuple[Any, ...]]:
    """What a failed call must not change: definition, units, holders and waiters."""
    result = []
    for name in names:
        status = limits.inspect(name)
        result.append(
            (
                status.limit,
                status.in_use,
                sorted((h.lease_id, h.occupy) for h in status.holders),
                [(w.ticket_id, w.occupy, w.position) for w in status.waiters],
            )
        )
    return result


class Attempt:
    """``limits.acquire(...)`` run in a daemon thread, recording what happened and when.

    With ``keep=False`` the lease is released right after the grant is recorded
    (a quick pass through the limit); otherwise the test releases ``lease``.
    With ``rate=True`` it calls ``rate_limit`` instead, and ``lease`` stays None.
    ``order`` (shared list) gets ``tag`` appended at the moment of the grant.
    """

    def __init__(
        self,
        limits: Limits,
        names: str | Sequence[str],
        occupy: int = 1,
        timeout: float | None = STEP_TIMEOUT,
        *,
        holder: str | None = None,
        missing: str | None = None,
        keep: bool = True,
        order: list[Any] | None = None,
        tag: Any = None,
        rate: bool = False,
    ) -> None:
        self.limits = limits
        self.names = names
        self.occupy = occupy
        self.timeout = timeout
        self.holder = holder
        self.missing = missing
        self.keep = keep
        self.order = order
        self.tag = tag if tag is not None else holder
        self.rate = rate
        self.lease: Lease | None = None
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self.granted_at: float | None = None
        self.finished_at: float | None = None
        self.done = threading.Event()
        self.granted = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Attempt:
        self.thread.start()
        return self

    def _run(self) -> None:
        self.started_at = time.monotonic()
        try:
            if self.rate:
                self.limits.rate_limit(
                    self.names,
                    self.occupy,
                    self.timeout,
                    holder=self.holder,
                    missing=self.missing,  # type: ignore[arg-type]
                )
                self.granted_at = time.monotonic()
                self.granted.set()
                return
            lease = self.limits.acquire(
                self.names,
                self.occupy,
                self.timeout,
                holder=self.holder,
                missing=self.missing,  # type: ignore[arg-type]
            )
            self.granted_at = time.monotonic()
            self.lease = lease
            if self.order is not None:
                self.order.append(self.tag)
            self.granted.set()
            if not self.keep:
                lease.release()
        except BaseException as exc:  # recorded for the test to assert on
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
            self.done.set()

    def join(self, timeout: float = STEP_TIMEOUT + 5) -> Attempt:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"acquire({self.names!r}) still running after {timeout}s"
        return self

    def result(self, timeout: float = STEP_TIMEOUT + 5) -> Lease:
        """The lease, or raise what acquire raised."""
        self.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.lease is not None
        return self.lease

    def passed(self, timeout: float = STEP_TIMEOUT + 5) -> None:
        """For ``rate=True``: return once through, or raise what rate_limit raised."""
        self.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.granted.is_set()


# --------------------------------------------------------------------------- checkers

Interval = tuple[float, float, int]
"""(start, end, units): units certainly held during [start, end] (monotonic seconds)."""


def peak_units(intervals: Iterable[Interval]) -> tuple[int, float]:
    """The most units held at any one instant, and when.

    Each interval was recorded *after* its grant returned and *before* its
    release was called, so it lies inside the real holding time: a peak above
    the limit's slots proves over-admission. At equal timestamps ends are
    counted first, so ties never produce a false alarm.
    """
    events: list[tuple[float, int, int]] = []
    for start, end, units in intervals:
        if end < start:
            raise ValueError(f"interval ends before it starts: {(start, end, units)}")
        events.append((start, 1, units))
        events.append((end, 0, -units))
    events.sort()
    held = peak = 0
    peak_at = 0.0
    for at, _, delta in events:
        held += delta
        if held > peak:
            peak, peak_at = held, at
    return peak, peak_at


Grant = tuple[float, float, int]
"""(before_call, after_return, units): a rate grant happened somewhere in between."""


def rate_window_violations(
    grants: Sequence[Grant], rate: float, burst: int
) -> list[tuple[float, float, int, float]]:
    """Sets of grants that break ``units <= burst + rate * window`` beyond doubt.

    The true grant times are unknown but lie within each (before, after)
    interval. Taking every grant whose interval lies inside [b, a], their true
    times span at most ``a - b``; if their units exceed ``burst + rate*(a - b)``
    no placement of the true times could respect the bound. Returns
    (b, a, units, allowed) for each such set.
    """
    by_after = sorted(grants, key=lambda g: g[1])
    found = []
    for start in sorted({g[0] for g in grants}):
        units = 0
        for before, after, n in by_after:
            if before < start:
                continue
            units += n
            allowed = burst + rate * (after - start)
            if units > allowed + 1e-6:
                found.append((start, after, units, allowed))
    return found


# --------------------------------------------------------------------------- subprocesses

SRC_DIR = str(Path(sluice.__file__).resolve().parent.parent)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a fresh Python child: sluice importable, SLUICE_* unset."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC_DIR, env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def run_python(code: str, timeout: float = 60.0, **env: str) -> Any:
    """Run ``code`` in a fresh interpreter; return the JSON it prints on its last line."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"child printed nothing; stderr:\n{proc.stderr}"
    return json.loads(lines[-1])
