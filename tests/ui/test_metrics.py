"""``/metrics``: parsed with prometheus_client's own parser; each metric counts what it says."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample as PromSample
from starlette.testclient import TestClient

import sluice.runs
from sluice import AcquireTimeout, Holder, Limit, Limits, LimitStatus
from sluice.limits import counters
from sluice.ui.sampler import Sampler

from . import _flows


def scrape(client: TestClient) -> dict[str, list[PromSample]]:
    """Every sample of ``/metrics`` by metric family name."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: list(f.samples) for f in text_string_to_metric_families(response.text)}


def value(samples: list[PromSample], name: str, **labels: str) -> float:
    """The value of the one sample named ``name`` with exactly these labels."""
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


def test_limit_gauges_describe_the_store_now(client: TestClient, limits: Limits) -> None:
    limits.create("db", slots=3)
    limits.create("api", rate=2.5, burst=4)
    limits.disable("api")
    with limits.concurrency("db", occupy=2):
        metrics = scrape(client)
    assert value(metrics["sluice_store_up"], "sluice_store_up") == 1
    assert value(metrics["sluice_limit_slots"], "sluice_limit_slots", limit="db") == 3
    assert [s.labels["limit"] for s in metrics["sluice_limit_slots"]] == ["db"]  # api has none
    assert value(metrics["sluice_limit_units_in_use"], "sluice_limit_units_in_use", limit="db") == 2
    assert value(metrics["sluice_limit_holders"], "sluice_limit_holders", limit="db") == 1
    assert value(metrics["sluice_limit_waiters"], "sluice_limit_waiters", limit="db") == 0
    assert value(metrics["sluice_limit_active"], "sluice_limit_active", limit="api") == 0
    assert value(metrics["sluice_limit_active"], "sluice_limit_active", limit="db") == 1
    rate = metrics["sluice_limit_configured_rate_per_second"]
    assert value(rate, "sluice_limit_configured_rate_per_second", limit="api") == 2.5
    assert value(metrics["sluice_limit_burst"], "sluice_limit_burst", limit="api") == 4


def test_this_process_counts_grants_units_timeouts_and_waits(
    client: TestClient, limits: Limits
) -> None:
    limits.create("pc-db", slots=1)
    before = {c.limit: c for c in counters.snapshot()}.get("pc-db")
    assert before is None  # a new limit name: nothing counted yet
    with limits.concurrency("pc-db"), pytest.raises(AcquireTimeout):
        limits.acquire("pc-db", timeout=0.05)
    limits.acquire("pc-db", occupy=1).release()
    metrics = scrape(client)
    assert value(metrics["sluice_limit_grants"], "sluice_limit_grants_total", limit="pc-db") == 2
    units = metrics["sluice_limit_granted_units"]
    assert value(units, "sluice_limit_granted_units_total", limit="pc-db") == 2
    timeouts = metrics["sluice_limit_timeouts"]
    assert value(timeouts, "sluice_limit_timeouts_total", limit="pc-db") == 1
    waits = metrics["sluice_limit_wait_seconds"]
    assert value(waits, "sluice_limit_wait_seconds_count", limit="pc-db") == 2
    assert value(waits, "sluice_limit_wait_seconds_bucket", limit="pc-db", le="+Inf") == 2
    assert value(waits, "sluice_limit_wait_seconds_sum", limit="pc-db") < 1.0


def test_a_lease_lost_to_a_reset_is_counted_by_its_process(
    client: TestClient, limits: Limits
) -> None:
    limits.create("pc-lost", slots=1)
    lease = limits.acquire("pc-lost")
    limits.reset("pc-lost")
    with pytest.raises(Exception, match="lost"):
        lease.release()
    lost = scrape(client)["sluice_limit_leases_lost"]
    assert value(lost, "sluice_limit_leases_lost_total", limit="pc-lost") == 1


def test_flow_metrics_count_task_runs_by_final_state_and_their_waits(
    client: TestClient, limits: Limits
) -> None:
    limits.create(_flows.LIMIT, slots=1)
    _flows.pipeline()
    for _ in range(2):  # scraping again counts nothing twice
        metrics = scrape(client)
    flow = "pipeline"
    runs = metrics["sluice_flow_runs"]
    assert value(runs, "sluice_flow_runs_total", flow=flow, state="Completed") == 1
    tasks = metrics["sluice_flow_task_runs"]
    assert value(tasks, "sluice_flow_task_runs_total", flow=flow, state="Completed") == 4
    assert value(tasks, "sluice_flow_task_runs_total", flow=flow, state="Failed") == 1
    waits = metrics["sluice_flow_task_wait_seconds"]
    assert value(waits, "sluice_flow_task_wait_seconds_count", flow=flow) == _flows.TASK_RUNS
    detail = sluice.runs.get(sluice.runs.list(1)[0].id)
    from sluice.flows.why import task_times

    total = sum(task_times(t.states, detail.run.ended_at)[0] for t in detail.task_runs)
    assert value(waits, "sluice_flow_task_wait_seconds_sum", flow=flow) == pytest.approx(total)


def test_metric_and_label_names_follow_prometheus_conventions(
    client: TestClient, limits: Limits
) -> None:
    limits.create(_flows.LIMIT, slots=1)
    _flows.pipeline()
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("sluice_"), family.name
        assert family.name == family.name.lower()
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        for sample in family.samples:
            assert all(label.islower() for label in sample.labels), sample


# --------------------------------------------------------------------------- reclaims


@dataclass
class _FakeLimits:
    """Stands in for Limits: the sampler reads list() and inspect() only."""

    statuses: list[LimitStatus] = field(default_factory=list)

    def list(self) -> list[Limit]:
        return [s.limit for s in self.statuses]

    def inspect(self, name: str) -> LimitStatus:
        return next(s for s in self.statuses if s.limit.name == name)


T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _status(at: float, *leases: tuple[str, float]) -> LimitStatus:
    holders = [
        Holder(lease, 1, "h", "host", 1, T0, T0 + timedelta(seconds=expires))
        for lease, expires in leases
    ]
    limit = Limit("db", slots=5)
    return LimitStatus(limit, len(holders), holders, [], None, T0 + timedelta(seconds=at))


@pytest.fixture
def fake() -> Iterator[tuple[_FakeLimits, Sampler]]:
    limits = _FakeLimits()
    yield limits, Sampler(limits, interval=0.05)  # type: ignore[arg-type]


def test_a_lease_gone_after_its_expiry_counts_as_reclaimed_one_gone_before_does_not(
    fake: tuple[_FakeLimits, Sampler],
) -> None:
    limits, sampler = fake
    limits.statuses = [_status(0, ("released", 30), ("expired", 1), ("renewed", 2))]
    sampler.sample(force=True)
    limits.statuses = [_status(1.5, ("renewed", 31))]  # "renewed" renewed: still there
    sampler.sample(force=True)
    assert sampler.reclaimed() == {"db": 1}  # "expired" (due at 1 s), not "released" (30 s)
    limits.statuses = [_status(40)]
    sampler.sample(force=True)
    assert sampler.reclaimed() == {"db": 2}  # "renewed", due at 31 s, gone at 40 s
    assert [p.in_use for p in sampler.history("db")] == [3, 1, 0]
