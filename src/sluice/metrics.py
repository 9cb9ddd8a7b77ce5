"""Prometheus metrics (needs ``pip install 'sluice[metrics]'``, also part of ``sluice[ui]``).

Three collectors, each with its own scope (docs/metrics.md lists every metric):

* :class:`LimitsCollector` — the whole store, from a :class:`~sluice.report.sampler.Sampler`:
  each limit's slots, rate, units in use, holders, waiters, the age of its oldest
  waiter and of its oldest lease (gauges), and its totals as the store counts them
  for every process (grants, units granted, timeouts, expired leases reclaimed, the
  wait-time histogram), with the delivered rate over the last minute; and the
  exporter's own health (the store up, the age of the last successful sample) and
  build info. ``sluice ui`` and ``sluice metrics serve`` export these.
* :class:`ProcessCollector` — one process's own acquisitions, exactly
  (:mod:`sluice.limits.counters`), including the leases it found lost. Register
  it in a worker to see that worker alone:
  ``prometheus_client.REGISTRY.register(sluice.metrics.ProcessCollector())``.
* :class:`FlowsCollector` — flow runs in the store's run history, whoever ran them:
  read again at every scrape (nothing counted in the exporter's memory), so every
  exporter on a store, restarted or not, answers the same.
"""

from __future__ import annotations

import platform
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sluice import __version__, runs
from sluice.errors import RunNotFound, SluiceError
from sluice.flows.states import FINAL_STATES
from sluice.flows.why import task_times
from sluice.limits import counters
from sluice.limits.model import WAIT_BUCKETS, LimitStatus
from sluice.report.sampler import Sampler
from sluice.store.history import FlowRunDetail, FlowRunRecord

__all__ = [
    "CONTENT_TYPE",
    "FLOW_DURATION_BUCKETS",
    "FlowsCollector",
    "LimitsCollector",
    "ProcessCollector",
    "build_registry",
    "exposition",
    "store_kind",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format's media type."""

FLOW_DURATION_BUCKETS: Final = (
    1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
)  # fmt: skip
"""Upper bounds (seconds) of the flow run duration histogram: 1 s to a day, then +Inf."""

_FINAL: Final = sorted(str(state) for state in FINAL_STATES)


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus buckets from per-bucket (not cumulative) counts over ``bounds`` and +Inf."""
    out, running = [], 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
    return out


def _histogram(
    family: HistogramMetricFamily, labels: list[str], buckets: Sequence[int], total: float
) -> None:
    """Add one histogram from per-bucket (not cumulative) counts over WAIT_BUCKETS and +Inf."""
    family.add_metric(labels, _cumulative(WAIT_BUCKETS, buckets), total)


def _gauge_histogram(
    family: GaugeHistogramMetricFamily,
    labels: list[str],
    bounds: Sequence[float],
    values: Sequence[float],
) -> None:
    """Add one gauge histogram of ``values`` over ``bounds`` (and +Inf)."""
    counts = [0] * (len(bounds) + 1)
    for value in values:
        counts[next((i for i, b in enumerate(bounds) if value <= b), len(bounds))] += 1
    family.add_metric(labels, _cumulative(bounds, counts), sum(values))


def store_kind(url: str) -> str:
    """The kind of store a URL names: ``memory``, ``sqlite``, ``redis`` or ``postgresql``."""
    scheme = urlsplit(url).scheme.lower()
    return {"rediss": "redis", "postgres": "postgresql"}.get(scheme, scheme)


def _oldest_age(status: LimitStatus, sampled_at: float, moments: Iterable[datetime]) -> float:
    """Seconds from the oldest of ``moments`` to the status's time (store clock); 0 if none."""
    oldest = min((m.timestamp() for m in moments), default=None)
    if oldest is None:
        return 0.0
    now = status.taken_at.timestamp() if status.taken_at is not None else sampled_at
    return max(now - oldest, 0.0)


class LimitsCollector(Collector):
    """Every limit of the store as the sampler last saw it, and the exporter's own health."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def _health(self, failed: bool) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "sluice_store_up", "1 if the last sample of the store succeeded, else 0."
        )
        up.add_metric([], 0.0 if failed else 1.0)
        last = self.sampler.last_success()
        age = GaugeMetricFamily(
            "sluice_store_last_successful_sample_age_seconds",
            "Seconds since this exporter last read every limit of the store successfully "
            "(since it started, if it never has): the exporter's own health.",
        )
        since = last if last is not None else self.sampler.started_at
        age.add_metric([], max(time.time() - since, 0.0))
        info = GaugeMetricFamily(
            "sluice_build_info",
            "Always 1: the Sluice version, Python version and store kind of this exporter.",
            labels=["version", "python", "store"],
        )
        info.add_metric(
            [__version__, platform.python_version(), store_kind(self.sampler.limits.url)], 1.0
        )
        yield from (up, age, info)

    def collect(self) -> Iterator[Metric]:
        """The gauges and counters of the latest sample."""
        sample = self.sampler.latest()
        yield from self._health(sample.error is not None)
        label = ["limit"]
        slots = GaugeMetricFamily(
            "sluice_limit_slots", "Units the limit lets be held at once.", labels=label
        )
        in_use = GaugeMetricFamily(
            "sluice_limit_units_in_use",
            "Units of the limit held now, by every process.",
            labels=label,
        )
        holders = GaugeMetricFamily(
            "sluice_limit_holders", "Leases holding units of the limit now.", labels=label
        )
        waiters = GaugeMetricFamily(
            "sluice_limit_waiters",
            "Requests queued on the limit now, by every process.",
            labels=label,
        )
        waiting = GaugeMetricFamily(
            "sluice_limit_waiting_units", "Units asked for by the queued requests.", labels=label
        )
        oldest_waiter = GaugeMetricFamily(
            "sluice_limit_oldest_waiter_age_seconds",
            "Seconds since the oldest waiting ticket of the limit joined its queue (store "
            "clock; 0 if none waits). A ticket stands for one process's identical requests "
            "and stays while any of them waits.",
            labels=label,
        )
        oldest_lease = GaugeMetricFamily(
            "sluice_limit_oldest_lease_age_seconds",
            "Seconds since the longest-held lease on the limit was granted (store clock; 0 "
            "if none holds it).",
            labels=label,
        )
        active = GaugeMetricFamily(
            "sluice_limit_active",
            "1 if the limit counts, 0 if it is disabled (admits everyone).",
            labels=label,
        )
        rate = GaugeMetricFamily(
            "sluice_limit_configured_rate_per_second",
            "Units the limit lets start per second (rate limits only).",
            labels=label,
        )
        burst = GaugeMetricFamily(
            "sluice_limit_burst", "Units that may start at once (rate limits only).", labels=label
        )
        token = GaugeMetricFamily(
            "sluice_limit_next_token_seconds",
            "Seconds until the next rate token is due; 0 if one is available now.",
            labels=label,
        )
        grants = CounterMetricFamily(
            "sluice_limit_grants",
            "Acquisitions granted on the limit since it was created, by every process.",
            labels=label,
        )
        units = CounterMetricFamily(
            "sluice_limit_granted_units",
            "Units granted on the limit since it was created (rate() of it is the delivered rate).",
            labels=label,
        )
        timeouts = CounterMetricFamily(
            "sluice_limit_timeouts",
            "Acquisitions that timed out queued behind the limit.",
            labels=label,
        )
        reclaimed = CounterMetricFamily(
            "sluice_limit_expired_leases_reclaimed",
            "Leases on the limit the store took back because they expired or their process "
            "died (crashed or hung holders).",
            labels=label,
        )
        waits = HistogramMetricFamily(
            "sluice_limit_wait_seconds",
            "Seconds each grant on the limit waited, from reaching the store to the grant "
            "(store clock).",
            labels=label,
        )
        delivered = GaugeMetricFamily(
            "sluice_limit_delivered_rate_per_second",
            "Units granted per second over the last minute of this exporter's samples.",
            labels=label,
        )
        for status in sample.statuses:
            name = [status.limit.name]
            totals = status.totals
            grants.add_metric(name, totals.grants)
            units.add_metric(name, totals.granted_units)
            timeouts.add_metric(name, totals.timeouts)
            reclaimed.add_metric(name, totals.expired_leases_reclaimed)
            _histogram(waits, name, totals.wait_buckets, totals.wait_seconds)
            per_second = self.sampler.delivered_rate(status.limit.name)
            if per_second is not None:
                delivered.add_metric(name, per_second)
            if status.limit.slots is not None:
                slots.add_metric(name, status.limit.slots)
            in_use.add_metric(name, status.in_use)
            holders.add_metric(name, len(status.holders))
            waiters.add_metric(name, sum(w.count for w in status.waiters))
            waiting.add_metric(name, sum(w.count * w.occupy for w in status.waiters))
            since = (w.since for w in status.waiters)
            oldest_waiter.add_metric(name, _oldest_age(status, sample.at, since))
            held = (h.since for h in status.holders)
            oldest_lease.add_metric(name, _oldest_age(status, sample.at, held))
            active.add_metric(name, 1.0 if status.limit.active else 0.0)
            if status.limit.rate is not None:
                rate.add_metric(name, status.limit.rate)
            if status.limit.burst is not None:
                burst.add_metric(name, status.limit.burst)
            if status.next_token_in is not None:
                token.add_metric(name, max(status.next_token_in, 0.0))
        yield from (slots, in_use, holders, waiters, waiting, oldest_waiter, oldest_lease)
        yield from (active, rate, burst, token)
        yield from (grants, units, timeouts, reclaimed, waits, delivered)


class ProcessCollector(Collector):
    """This process's acquisitions, per limit, since it started (exact, process-local)."""

    def collect(self) -> Iterator[Metric]:
        """Grants, units granted, timeouts, leases lost and the wait-time histogram."""
        label = ["limit"]
        grants = CounterMetricFamily(
            "sluice_process_grants", "Acquisitions granted to this process.", labels=label
        )
        units = CounterMetricFamily(
            "sluice_process_granted_units", "Units granted to this process.", labels=label
        )
        timeouts = CounterMetricFamily(
            "sluice_process_timeouts",
            "Acquisitions of this process that timed out queued behind the limit.",
            labels=label,
        )
        lost = CounterMetricFamily(
            "sluice_process_leases_lost",
            "Leases of this process found lost: expired before renewal, or revoked.",
            labels=label,
        )
        waits = HistogramMetricFamily(
            "sluice_process_wait_seconds",
            "Seconds this process's granted acquisitions waited, from the call to the grant.",
            labels=label,
        )
        for c in counters.snapshot():
            grants.add_metric([c.limit], c.grants)
            units.add_metric([c.limit], c.granted_units)
            timeouts.add_metric([c.limit], c.timeouts)
            lost.add_metric([c.limit], c.leases_lost)
            _histogram(waits, [c.limit], c.wait_buckets, c.wait_sum)
        yield from (grants, units, timeouts, lost, waits)


@dataclass(frozen=True)
class _EndedRun:
    """What the flow metrics need of one ended flow run (it changes no more once ended)."""

    flow: str
    state: str
    seconds: float
    """From its start (its creation, if it never started) to its end."""
    task_states: tuple[str, ...]
    task_waits: tuple[float, ...]


def _ended_run(detail: FlowRunDetail) -> _EndedRun | None:
    run = detail.run
    if run.ended_at is None:
        return None
    start = run.started_at if run.started_at is not None else run.created_at
    return _EndedRun(
        run.flow,
        run.state,
        max(run.ended_at - start, 0.0),
        tuple(t.run.state for t in detail.task_runs),
        tuple(task_times(t.states, run.ended_at)[0] for t in detail.task_runs),
    )


class FlowsCollector(Collector):
    """The newest ``window`` flow runs of the run history, read again at every scrape.

    Every value is a function of what the history holds when it is scraped, so
    exporters restarted, or several on one store, answer alike. They are gauges,
    not counters: the history keeps its newest runs only (``SLUICE_HISTORY_KEEP``),
    so a count of what it holds goes down when old runs are pruned. An ended run
    is read in full once per exporter and remembered while it stays in the window
    (it no longer changes); runs still going are read from the list every time.
    """

    def __init__(self, url: str, window: int = 200) -> None:
        self.url = url
        self.window = window
        self._lock = threading.Lock()
        self._ended: dict[str, _EndedRun] = {}

    def _read(self) -> tuple[list[FlowRunRecord], list[_EndedRun]]:
        listed = runs.list(self.window, url=self.url)
        known, ended = {}, []
        for run in listed:
            if run.ended_at is None:
                continue
            summary = self._ended.get(run.id)
            if summary is None:
                try:
                    summary = _ended_run(runs.get(run.id, url=self.url))
                except RunNotFound:
                    continue  # pruned since it was listed
                if summary is None:
                    continue
            known[run.id] = summary
            ended.append(summary)
        self._ended = known  # what left the window cannot come back into it
        return listed, ended

    def collect(self) -> Iterator[Metric]:
        """Flow runs in progress; ended ones by final state and duration; their task runs."""
        with self._lock:
            try:
                listed, ended = self._read()
                failed = False
            except SluiceError:
                listed, ended, failed = [], [], True
        up = GaugeMetricFamily(
            "sluice_flow_history_up", "1 if the last read of the run history succeeded, else 0."
        )
        up.add_metric([], 0.0 if failed else 1.0)
        newest = f"the newest {self.window} flow runs of the run history"
        in_progress = GaugeMetricFamily(
            "sluice_flow_runs_in_progress",
            f"Flow runs among {newest} that have not ended: running now, or stopped without "
            "recording an end (their process was killed).",
            labels=["flow"],
        )
        running = Counter(run.flow for run in listed if run.ended_at is None)
        for flow in sorted({run.flow for run in listed}):
            in_progress.add_metric([flow], running[flow])
        labels = ["flow", "state"]
        by_state = GaugeMetricFamily(
            "sluice_flow_recent_runs",
            f"Ended flow runs among {newest}, by final state.",
            labels=labels,
        )
        task_runs = GaugeMetricFamily(
            "sluice_flow_recent_task_runs",
            f"Task runs of the ended flow runs among {newest}, by final state.",
            labels=labels,
        )
        durations = GaugeHistogramMetricFamily(
            "sluice_flow_recent_run_duration_seconds",
            f"Seconds each ended flow run among {newest} took, from its start to its end.",
            labels=["flow"],
        )
        waits = GaugeHistogramMetricFamily(
            "sluice_flow_recent_task_wait_seconds",
            f"Seconds each task run of the ended flow runs among {newest} spent pending, "
            "waiting on limits or for a worker, and in retry delays.",
            labels=["flow"],
        )
        for flow in sorted({e.flow for e in ended}):
            mine = [e for e in ended if e.flow == flow]
            states = Counter(e.state for e in mine)
            tasks = Counter(state for e in mine for state in e.task_states)
            for state in sorted({*_FINAL, *states}):
                by_state.add_metric([flow, state], states[state])
            for state in sorted({*_FINAL, *tasks}):
                task_runs.add_metric([flow, state], tasks[state])
            _gauge_histogram(durations, [flow], FLOW_DURATION_BUCKETS, [e.seconds for e in mine])
            task_waits = [w for e in mine for w in e.task_waits]
            _gauge_histogram(waits, [flow], WAIT_BUCKETS, task_waits)
        yield from (up, in_progress, by_state, task_runs, durations, waits)


def build_registry(collectors: Iterable[Collector]) -> CollectorRegistry:
    """A registry of its own (not the global one) holding these collectors."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the Prometheus text format."""
    return generate_latest(registry)
