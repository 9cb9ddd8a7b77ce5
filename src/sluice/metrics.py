"""Prometheus metrics (needs ``pip install 'sluice[metrics]'``, also part of ``sluice[ui]``).

Three collectors, each with its own scope (docs/cli.md lists every metric):

* :class:`LimitsCollector` — the whole store, from a :class:`~sluice.report.sampler.Sampler`:
  each limit's slots, rate, units in use, holders, waiters (gauges), and its
  totals as the store counts them for every process (grants, units granted,
  timeouts, expired leases reclaimed, the wait-time histogram), with the
  delivered rate over the last minute. ``sluice ui`` and ``sluice metrics
  serve`` export these.
* :class:`ProcessCollector` — one process's own acquisitions, exactly
  (:mod:`sluice.limits.counters`), including the leases it found lost. Register
  it in a worker to see that worker alone:
  ``prometheus_client.REGISTRY.register(sluice.metrics.ProcessCollector())``.
* :class:`FlowsCollector` — flow runs recorded in the store's run history by
  any process: task runs by final state, and their wait times.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sluice import runs
from sluice.errors import RunNotFound, SluiceError
from sluice.flows.why import task_times
from sluice.limits import counters
from sluice.limits.model import WAIT_BUCKETS, wait_bucket
from sluice.report.sampler import Sampler

__all__ = [
    "CONTENT_TYPE",
    "FlowsCollector",
    "LimitsCollector",
    "ProcessCollector",
    "build_registry",
    "exposition",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format's media type."""


def _histogram(
    family: HistogramMetricFamily, labels: list[str], buckets: Sequence[int], total: float
) -> None:
    """Add one histogram from per-bucket (not cumulative) counts over WAIT_BUCKETS and +Inf."""
    cumulative, running = [], 0
    for bound, count in zip((*WAIT_BUCKETS, float("inf")), buckets, strict=True):
        running += count
        cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
    family.add_metric(labels, cumulative, total)


class LimitsCollector(Collector):
    """Every limit of the store as the sampler last saw it, and the leases it saw reclaimed."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def collect(self) -> Iterator[Metric]:
        """The gauges and counters of the latest sample."""
        sample = self.sampler.latest()
        up = GaugeMetricFamily(
            "sluice_store_up", "1 if the last sample of the store succeeded, else 0."
        )
        up.add_metric([], 0.0 if sample.error else 1.0)
        yield up
        label = ["limit"]
        slots = GaugeMetricFamily(
            "sluice_limit_slots", "Units the limit lets be held at once.", labels=label
        )
        in_use = GaugeMetricFamily("sluice_limit_units_in_use", "Units held now.", labels=label)
        holders = GaugeMetricFamily(
            "sluice_limit_holders", "Leases holding units now.", labels=label
        )
        waiters = GaugeMetricFamily("sluice_limit_waiters", "Requests queued now.", labels=label)
        waiting = GaugeMetricFamily(
            "sluice_limit_waiting_units", "Units asked for by the queued requests.", labels=label
        )
        active = GaugeMetricFamily(
            "sluice_limit_active", "1 if the limit counts, 0 if disabled.", labels=label
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
            "Units granted per second over the last minute of samples.",
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
            active.add_metric(name, 1.0 if status.limit.active else 0.0)
            if status.limit.rate is not None:
                rate.add_metric(name, status.limit.rate)
            if status.limit.burst is not None:
                burst.add_metric(name, status.limit.burst)
            if status.next_token_in is not None:
                token.add_metric(name, max(status.next_token_in, 0.0))
        yield from (slots, in_use, holders, waiters, waiting, active, rate, burst, token)
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


class FlowsCollector(Collector):
    """Ended flow runs found in the run history, each counted once by this exporter.

    Each scrape reads the newest ``window`` flow runs; every one that has ended
    and was not counted yet adds its task runs (by final state) and their wait
    times. Runs already in the history when the exporter starts are counted on
    its first scrape; runs pruned before a scrape found them are not.
    """

    def __init__(self, url: str, window: int = 200) -> None:
        self.url = url
        self.window = window
        self._lock = threading.Lock()
        self._counted: set[str] = set()
        self._flow_runs: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._task_runs: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._waits: dict[str, list[int]] = {}
        self._wait_sums: defaultdict[str, float] = defaultdict(float)

    def _update(self) -> None:
        listed = runs.list(self.window, url=self.url)
        for run in listed:
            if run.ended_at is None or run.id in self._counted:
                continue
            try:
                detail = runs.get(run.id, url=self.url)
            except RunNotFound:
                continue
            self._counted.add(run.id)
            self._flow_runs[(run.flow, run.state)] += 1
            buckets = self._waits.setdefault(run.flow, [0] * (len(WAIT_BUCKETS) + 1))
            for task_run in detail.task_runs:
                self._task_runs[(run.flow, task_run.run.state)] += 1
                waited, _ = task_times(task_run.states, run.ended_at)
                buckets[wait_bucket(waited)] += 1
                self._wait_sums[run.flow] += waited
        self._counted &= {run.id for run in listed}  # the rest cannot be listed again

    def collect(self) -> Iterator[Metric]:
        """Flow runs and task runs by final state, and task wait times, per flow."""
        with self._lock:
            # If the store fails, sluice_store_up says so; report what was counted.
            with contextlib.suppress(SluiceError):
                self._update()
            flow_runs = sorted(self._flow_runs.items())
            task_runs = sorted(self._task_runs.items())
            waits = sorted(
                (flow, list(b), self._wait_sums[flow]) for flow, b in self._waits.items()
            )
        labels = ["flow", "state"]
        fr = CounterMetricFamily(
            "sluice_flow_runs",
            "Ended flow runs found in the run history, by final state.",
            labels=labels,
        )
        tr = CounterMetricFamily(
            "sluice_flow_task_runs",
            "Task runs of those flow runs, by final state.",
            labels=labels,
        )
        for (flow, state), count in flow_runs:
            fr.add_metric([flow, state], count)
        for (flow, state), count in task_runs:
            tr.add_metric([flow, state], count)
        hist = HistogramMetricFamily(
            "sluice_flow_task_wait_seconds",
            "Seconds each of those task runs spent pending, waiting on limits or workers, "
            "and in retry delays.",
            labels=["flow"],
        )
        for flow, buckets, total in waits:
            _histogram(hist, [flow], buckets, total)
        yield from (fr, tr, hist)


def build_registry(collectors: Iterable[Collector]) -> CollectorRegistry:
    """A registry of its own (not the global one) holding these collectors."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the Prometheus text format."""
    return generate_latest(registry)
