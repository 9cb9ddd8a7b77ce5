"""Helpers shared by the conformance tests: waiting threads, snapshots and invariant checkers.

Time in tests: nothing here sleeps to let something happen. A test waits for an
observed state (:func:`wait_until`, :func:`wait_until_async`), checks that a state
holds over a window (:func:`stays`), or simulates the work done while holding a
lease (:func:`simulate_work`); ``scripts/check_test_sleeps.py`` flags any other sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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

CLOCK_SLACK = 0.005
"""Seconds of disagreement allowed between a store's clock and time.monotonic()."""

LATE_BOUND = WAKE_BOUND
"""Seconds a rate waiter may get its token after it was due (a computed sleep).

Generous, as a correctness test on a loaded machine needs (how late, typically, is
for the benchmarks to measure), yet below the 1 s safety re-check, so a waiter that
merely re-polled instead of sleeping until its token is due cannot pass.
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


async def wait_until_async(
    probe: Callable[[], Awaitable[T | None]], timeout: float = 5.0, what: str = "a condition"
) -> T:
    """Await ``probe()`` every few ms until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}; last value: {value!r}")
        await asyncio.sleep(0.005)


def stays(probe: Callable[[], object], seconds: float, what: str = "a condition") -> None:
    """Check ``probe()`` every few ms for ``seconds``: it must be truthy every time.

    For what must NOT happen (a grant to a waiter that is still blocked): the
    window is how long a wrong outcome is given to show up.
    """
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        assert value, f"{what} stopped holding: {value!r}"
        if time.monotonic() >= deadline:
            return
        time.sleep(0.005)


def simulate_work(seconds: float) -> None:
    """The work a caller does while it holds a lease (or between its calls) in a load test.

    It sets how long holds last, never when something has happened: tests wait
    for observed states with :func:`wait_until`.
    """
    time.sleep(seconds)


async def simulate_work_async(seconds: float) -> None:
    """:func:`simulate_work` for coroutines."""
    await asyncio.sleep(seconds)


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
    With ``keep=False`` and ``holdings``, the pass through the limit is recorded there.
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
        holdings: Holdings | None = None,
    ) -> None:
        self.limits = limits
        self.holdings = holdings
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
                if self.holdings is not None:
                    with self.holdings.holding(lease.names, self.occupy):
                        pass
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


HoldRecord = tuple[str, int, float, float]
"""(limit, units, start, end): one hold (or rate grant) as a child process reports it."""


def _names(names: str | Iterable[str]) -> tuple[str, ...]:
    return (names,) if isinstance(names, str) else tuple(names)


class Holdings:
    """What every caller of a load test held, and when; then the invariants, checked.

    Threads and coroutines record through :meth:`holding`, entered after the
    grant returned and left before release is called, so each interval lies
    inside the real holding time. A child process keeps its own ``Holdings`` and
    sends :meth:`records` to the parent, which :meth:`merge`-s them
    (``time.monotonic()`` is system-wide on Linux). Rate grants are recorded as
    (before the call, after it returned) with :meth:`rate_grant`.

    :meth:`check` asserts, for every limit given in ``slots``, that no instant saw
    more units held than its slots, and for every limit in ``rates``
    (``name: (rate, burst)``) that no window saw more than ``burst + rate * window``
    units granted; and that each of them was used at all, so a check cannot pass
    on no data. It returns the peaks, for a test to assert that the load was real.
    """

    def __init__(
        self,
        slots: Mapping[str, int] | None = None,
        rates: Mapping[str, tuple[float, int]] | None = None,
    ) -> None:
        self.slots = dict(slots or {})
        self.rates = dict(rates or {})
        self._cond = threading.Condition()
        self._held: defaultdict[str, list[Interval]] = defaultdict(list)
        self._granted: defaultdict[str, list[Grant]] = defaultdict(list)
        self._live: Counter[str] = Counter()
        self._most: Counter[str] = Counter()

    @contextmanager
    def holding(self, names: str | Iterable[str], units: int = 1) -> Iterator[None]:
        """Record a hold of ``units`` of every limit in ``names`` for the length of the block."""
        held = _names(names)
        start = time.monotonic()
        with self._cond:
            for name in held:
                self._live[name] += units
                self._most[name] = max(self._most[name], self._live[name])
            self._cond.notify_all()
        try:
            yield
        finally:
            end = time.monotonic()
            with self._cond:
                for name in held:
                    self._live[name] -= units
                    self._held[name].append((start, end, units))

    def add(self, names: str | Iterable[str], units: int, start: float, end: float) -> None:
        """Record a hold measured elsewhere (after its grant returned, before its release)."""
        with self._cond:
            for name in _names(names):
                self._held[name].append((start, end, units))

    def rate_grant(
        self, names: str | Iterable[str], units: int, before: float, after: float
    ) -> None:
        """Record a rate grant: the call started at ``before`` and returned at ``after``."""
        with self._cond:
            for name in _names(names):
                self._granted[name].append((before, after, units))

    def records(self) -> tuple[list[HoldRecord], list[HoldRecord]]:
        """(holds, rate grants) as plain tuples, for a child process to send its parent."""
        with self._cond:
            holds = [(n, u, a, b) for n, ivs in self._held.items() for a, b, u in ivs]
            grants = [(n, u, a, b) for n, gs in self._granted.items() for a, b, u in gs]
        return holds, grants

    def merge(self, records: tuple[Iterable[HoldRecord], Iterable[HoldRecord]]) -> None:
        """Add what :meth:`records` returned in another process."""
        holds, grants = records
        for name, units, start, end in holds:
            self.add(name, units, start, end)
        for name, units, before, after in grants:
            self.rate_grant(name, units, before, after)

    def intervals(self, name: str) -> list[Interval]:
        """Every hold of ``name`` recorded so far."""
        with self._cond:
            return list(self._held[name])

    def grants(self, name: str) -> list[Grant]:
        """Every rate grant of ``name`` recorded so far."""
        with self._cond:
            return list(self._granted[name])

    def count(self, name: str) -> int:
        """How many holds and rate grants of ``name`` were recorded."""
        with self._cond:
            return len(self._held[name]) + len(self._granted[name])

    def wait_full(self, name: str, units: int, timeout: float = 10.0) -> None:
        """Wait until callers in this process have held ``units`` of ``name`` at once.

        Called inside :meth:`holding` by every holder of a load test, it keeps the
        first ones in until the limit is full, so the load provably reaches the
        limit (a store that admits fewer at once fails here); once it has, nobody waits.
        """
        with self._cond:
            full = self._cond.wait_for(lambda: self._most[name] >= units, timeout)
            most = self._most[name]
        assert full, f"{name!r}: at most {most} unit(s) held at once here, waited for {units}"

    async def wait_full_async(self, name: str, units: int, timeout: float = 10.0) -> None:
        """:meth:`wait_full` for coroutines (it polls, so the event loop keeps running)."""

        async def probe() -> bool:
            return self._most[name] >= units

        await wait_until_async(probe, timeout, f"{units} unit(s) of {name!r} held at once")

    def check(self) -> dict[str, int]:
        """Assert the invariants (see the class); return each checked limit's peak units."""
        peaks: dict[str, int] = {}
        with self._cond:
            held = {name: list(ivs) for name, ivs in self._held.items()}
            granted = {name: list(gs) for name, gs in self._granted.items()}
        for name, slots in self.slots.items():
            intervals = held.get(name, [])
            assert intervals, f"nobody held {name!r}: the invariant would be checked on nothing"
            peak, at = peak_units(intervals)
            assert peak <= slots, f"{name!r}: {peak} units held at t={at:.6f}, slots={slots}"
            peaks[name] = peak
        for name, (rate, burst) in self.rates.items():
            grants = granted.get(name, [])
            assert grants, f"no rate grant on {name!r}: the bound would be checked on nothing"
            violations = rate_window_violations(grants, rate, burst)
            assert not violations, (
                f"{name!r}: {len(violations)} windows over burst + rate*w, e.g. {violations[0]}"
            )
        return peaks


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
