"""One sampler per server: every limit inspected once per interval, shared by every client.

``Limits.inspect()`` reclaims expired leases, so it writes; the dashboard and
the exporter therefore never inspect per request. A sampler inspects each
limit at most once per ``interval`` (a background thread does it on the
interval, and a request finding the last sample stale takes a new one), and
every page, API call and scrape reads the latest sample. It also keeps, per
limit, a ring buffer of units in use, waiters and units granted so far, for the
chart and the delivered rate.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from sluice.errors import LimitNotFound, SluiceError
from sluice.limits.model import LimitStatus
from sluice.limits.sync import Limits

__all__ = ["Point", "Sample", "Sampler"]


@dataclass(frozen=True)
class Point:
    """One limit at one sample: units in use and requests waiting."""

    at: float
    """Seconds since the epoch (this host's clock) when the sample was taken."""
    in_use: int
    waiting: int
    """Waiters (queued requests), not units."""
    granted_units: int = 0
    """Units granted since the limit was created (its totals), every process's."""


@dataclass(frozen=True)
class Sample:
    """Every limit's status at one moment, or why the store could not be read."""

    at: float
    statuses: tuple[LimitStatus, ...] = ()
    error: str | None = None

    def status(self, name: str) -> LimitStatus | None:
        """The named limit's status in this sample, if it existed then."""
        for status in self.statuses:
            if status.limit.name == name:
                return status
        return None


class Sampler:
    """Inspects every limit of a store at most once per ``interval`` and remembers the trend."""

    def __init__(self, limits: Limits, interval: float = 1.0, keep_seconds: float = 600.0) -> None:
        if not 0.05 <= interval <= 60:
            raise ValueError(f"interval must be between 0.05 and 60 seconds, got {interval!r}")
        self.limits = limits
        self.interval = interval
        self.keep_seconds = keep_seconds
        self._lock = threading.Lock()
        self._latest: Sample | None = None
        self._last_success: float | None = None
        self.started_at = time.time()
        """When the sampler was made (this host's clock)."""
        self._points: dict[str, deque[Point]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- reading

    def latest(self) -> Sample:
        """The newest sample, taking a new one if it is older than the interval."""
        with self._lock:
            latest = self._latest
        # With the background thread running it keeps samples fresh; allow it some slack.
        stale = self.interval * (2 if self._thread is not None else 1)
        if latest is None or time.time() - latest.at >= stale:
            return self.sample()
        return latest

    def last_success(self) -> float | None:
        """When (this host's clock) the newest sample that read the store was taken, if any."""
        with self._lock:
            return self._last_success

    def history(self, name: str) -> list[Point]:
        """The limit's points over the last ``keep_seconds``, oldest first."""
        with self._lock:
            return list(self._points.get(name, ()))

    def delivered_rate(self, name: str, window: float = 60.0) -> float | None:
        """Units per second the limit granted over the last ``window`` seconds of samples.

        None until two samples at least a second apart are kept; a limit
        deleted and created again in between restarts the count.
        """
        with self._lock:
            points = self._points.get(name)
            if not points:
                return None
            last = points[-1]
            first = next((p for p in points if last.at - p.at <= window), last)
        span = last.at - first.at
        if span < 1.0 or last.granted_units < first.granted_units:
            return None
        return (last.granted_units - first.granted_units) / span

    # ------------------------------------------------------------- sampling

    def sample(self, force: bool = False) -> Sample:
        """Inspect every limit now, record the trend, and return the new sample (unless one
        was taken within a quarter interval and ``force`` is false: callers that raced share it).
        """
        with self._lock:
            latest = self._latest
            if not force and latest is not None and time.time() - latest.at < self.interval / 4:
                return latest  # several callers raced for a fresh sample: one is enough
            sample = self._take()
            self._record(sample)
            self._latest = sample
            if sample.error is None:
                self._last_success = sample.at
            return sample

    def _take(self) -> Sample:
        try:
            names = [limit.name for limit in self.limits.list()]
            statuses = []
            for name in names:
                try:
                    statuses.append(self.limits.inspect(name))
                except LimitNotFound:
                    continue  # deleted since it was listed
        except SluiceError as exc:
            return Sample(time.time(), (), f"{type(exc).__name__}: {exc}")
        return Sample(time.time(), tuple(statuses))

    def _record(self, sample: Sample) -> None:
        if sample.error is not None:
            return
        keep = max(2, int(self.keep_seconds / self.interval) + 1)
        present = set()
        for status in sample.statuses:
            name = status.limit.name
            present.add(name)
            points = self._points.get(name)
            if points is None:
                points = self._points[name] = deque(maxlen=keep)
            points.append(
                Point(
                    sample.at,
                    status.in_use,
                    sum(w.count for w in status.waiters),
                    status.totals.granted_units,
                )
            )
        for name in list(self._points):
            if name not in present:  # deleted: its trend goes with it
                del self._points[name]

    # ------------------------------------------------------------- background

    def start(self) -> None:
        """Sample every ``interval`` on a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="sluice-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the background thread (a sample in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)
