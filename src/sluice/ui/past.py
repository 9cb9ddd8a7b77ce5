"""A limit's past for its page: the timeline and the audit record, read from the store.

What the chart shows survives a restart of ``sluice ui``: units in use come from the
store's record of held units, slots from the audit record, flow task runs' waits from
the run history (see :mod:`sluice.report.timeline`); only the waiters outside flows
come from this dashboard's own samples. Each limit's past is read at most once per
sample (once per sampling interval), however many pages show it, so the load on the store
does not grow with viewers; an admin action takes a new sample, so the page's next read
shows its record.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sluice import runs
from sluice.errors import RunNotFound
from sluice.limits.model import LimitStatus
from sluice.report.sampler import Sampler
from sluice.report.timeline import Timeline, build_timeline, run_waits
from sluice.store import Store, acquire_store, release_store
from sluice.store.audit import ADMIN_KEEP, AdminRecord
from sluice.ui.views import RunIndex

__all__ = ["BINS", "MAX_WINDOW", "MIN_WINDOW", "LimitPast"]

BINS = 240
"""Slices of a timeline (one per 2.5 s over ten minutes)."""
MIN_WINDOW = 60.0
MAX_WINDOW = 86400.0
_RUNS_SEARCHED = 200
"""The newest flow runs searched for task runs that waited on the limit."""


class LimitPast:
    """Timelines and audit records of a store's limits, each read at most once per interval."""

    def __init__(self, url: str, runs_index: RunIndex, sampler: Sampler) -> None:
        self.url = url
        self.runs = runs_index
        self.sampler = sampler
        self._lock = threading.Lock()
        self._timelines: dict[tuple[str, float], tuple[float, Timeline]] = {}
        self._audits: dict[str, tuple[float, list[AdminRecord]]] = {}
        self._ended_waits: dict[tuple[str, str], list[tuple[float, float]]] = {}

    @contextmanager
    def _store(self) -> Iterator[Store]:
        store = acquire_store(self.url)
        try:
            yield store
        finally:
            release_store(store)

    def _fresh(self, taken: float) -> bool:
        """Whether what was read at ``taken`` is still current: read since the newest sample,
        within the interval."""
        sampled = self.sampler.last_success()
        if sampled is not None and taken < sampled:
            return False
        return time.time() - taken < self.sampler.interval

    def audit(self, name: str, count: int = ADMIN_KEEP) -> list[AdminRecord]:
        """The limit's newest admin records, newest first."""
        with self._lock:
            cached = self._audits.get(name)
        if cached is not None and self._fresh(cached[0]):
            return cached[1][:count]
        taken = time.time()  # before the read: a change made during it reads as not seen
        with self._store() as store:
            records = store.admin_history(name, ADMIN_KEEP)
        with self._lock:
            self._audits[name] = (taken, records)
        return records[:count]

    def timeline(self, status: LimitStatus, window: float) -> Timeline:
        """The limit over the last ``window`` seconds (MIN_WINDOW to MAX_WINDOW)."""
        name = status.limit.name
        key = (name, window)
        with self._lock:
            cached = self._timelines.get(key)
        if cached is not None and self._fresh(cached[0]):
            return cached[1]
        until = time.time()
        since = until - window
        with self._store() as store:
            spans = store.held_spans([name], since, until)
        samples = [(p.at, p.waiting) for p in self.sampler.history(name)]
        made = build_timeline(
            since,
            until,
            BINS,
            spans,
            self._waits(name, since, until),
            samples,
            self.audit(name),
            status.limit.slots,
        )
        with self._lock:
            self._timelines[key] = (until, made)
        return made

    def _waits(self, name: str, since: float, until: float) -> list[tuple[float, float]]:
        """When flow task runs waited on the limit, from the newest flow runs' records."""
        out: list[tuple[float, float]] = []
        listed = runs.list(_RUNS_SEARCHED, url=self.url)
        with self._lock:  # forget runs no longer among the newest
            ids = {run.id for run in listed}
            for key in [k for k in self._ended_waits if k[0] not in ids]:
                del self._ended_waits[key]
        for run in listed:
            if run.created_at > until or (run.ended_at is not None and run.ended_at < since):
                continue
            key = (run.id, name)
            with self._lock:
                known = self._ended_waits.get(key)
            if known is None:
                try:
                    detail = self.runs.detail(run.id)
                except RunNotFound:
                    continue  # pruned since it was listed
                known = run_waits(detail, name, until)
                if detail.run.ended_at is not None:  # an ended run's record is final
                    with self._lock:
                        self._ended_waits[key] = known
            out.extend(known)
        return out
