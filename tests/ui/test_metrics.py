"""``/metrics``: parsed with prometheus_client's own parser; each metric counts what it says."""

from __future__ import annotations

import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample as PromSample
from starlette.testclient import TestClient

import sluice.runs
from conformance._helpers import Attempt, stays, wait_for_waiters
from conformance._procs import hung_holder
from conftest import cross_process_only
from sluice import AcquireTimeout, LeaseLost, Limits
from sluice.limits import counters
from sluice.metrics import ProcessCollector, build_registry, exposition
from sluice.ui.app import Dashboard

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


def test_limit_totals_count_every_grant_timeout_and_wait_in_the_store(
    client: TestClient, limits: Limits, store_url: str
) -> None:
    limits.create("db", slots=1)
    with limits.concurrency("db"), pytest.raises(AcquireTimeout):
        limits.acquire("db", timeout=0.05)
    limits.acquire("db", occupy=1).release()
    # Another client (as another process would) is counted too: the store counts.
    with Limits(store_url) as other:
        other.acquire("db").release()
    metrics = scrape(client)
    assert value(metrics["sluice_limit_grants"], "sluice_limit_grants_total", limit="db") == 3
    units = metrics["sluice_limit_granted_units"]
    assert value(units, "sluice_limit_granted_units_total", limit="db") == 3
    timeouts = metrics["sluice_limit_timeouts"]
    assert value(timeouts, "sluice_limit_timeouts_total", limit="db") == 1
    waits = metrics["sluice_limit_wait_seconds"]
    assert value(waits, "sluice_limit_wait_seconds_count", limit="db") == 3
    assert value(waits, "sluice_limit_wait_seconds_bucket", limit="db", le="0.001") == 3
    assert value(waits, "sluice_limit_wait_seconds_bucket", limit="db", le="+Inf") == 3
    assert value(waits, "sluice_limit_wait_seconds_sum", limit="db") < 1.0
    reclaimed = metrics["sluice_limit_expired_leases_reclaimed"]
    assert value(reclaimed, "sluice_limit_expired_leases_reclaimed_total", limit="db") == 0


def test_a_queued_grant_lands_in_its_wait_bucket(client: TestClient, limits: Limits) -> None:
    limits.create("db", slots=1)
    held = limits.acquire("db")
    waiter = Attempt(limits, "db", timeout=10, keep=False).start()
    wait_for_waiters(limits, "db", 1)
    stays(lambda: not waiter.granted.is_set(), 0.2, "the waiter waiting")  # its wait
    held.release()
    waiter.passed()
    waits = scrape(client)["sluice_limit_wait_seconds"]
    assert value(waits, "sluice_limit_wait_seconds_bucket", limit="db", le="0.1") == 1
    assert value(waits, "sluice_limit_wait_seconds_bucket", limit="db", le="0.5") == 2
    assert 0.2 <= value(waits, "sluice_limit_wait_seconds_sum", limit="db") < 5


@cross_process_only
def test_an_expired_lease_reclaimed_is_counted(
    client: TestClient, limits: Limits, store_url: str
) -> None:
    limits.create("db", slots=1, lease_ttl=1)
    with hung_holder(limits, store_url, ["db"]):  # a real holder, frozen: it stops renewing
        limits.acquire("db", timeout=10).release()  # reclaims it on the way in, once expired
    reclaimed = scrape(client)["sluice_limit_expired_leases_reclaimed"]
    assert value(reclaimed, "sluice_limit_expired_leases_reclaimed_total", limit="db") == 1


def test_the_delivered_rate_is_measured_over_the_samples(
    client: TestClient, limits: Limits, dashboard: Dashboard
) -> None:
    limits.create("api", rate=50, burst=5)
    scrape(client)  # a first sample: no rate yet
    assert scrape(client).get("sluice_limit_delivered_rate_per_second", []) == []
    started = time.monotonic()
    while time.monotonic() - started < 1.2:
        limits.rate_limit("api")
    dashboard.sampler.sample(force=True)
    delivered = scrape(client)["sluice_limit_delivered_rate_per_second"]
    per_second = value(delivered, "sluice_limit_delivered_rate_per_second", limit="api")
    assert 20 <= per_second <= 60, per_second


def test_the_process_collector_counts_this_process_under_its_own_names(
    limits: Limits,
) -> None:
    registry = build_registry([ProcessCollector()])
    name = f"pc-db-{uuid.uuid4().hex[:8]}"  # counters are per process, whatever the store
    limits.create(name, slots=1)
    before = {c.limit: c for c in counters.snapshot()}.get(name)
    assert before is None  # a new limit name: nothing counted yet
    with limits.concurrency(name), pytest.raises(AcquireTimeout):
        limits.acquire(name, timeout=0.05)
    lease = limits.acquire(name)
    limits.reset(name)
    with pytest.raises(LeaseLost):
        lease.release()
    metrics = {
        f.name: list(f.samples)
        for f in text_string_to_metric_families(exposition(registry).decode())
    }
    grants = metrics["sluice_process_grants"]
    assert value(grants, "sluice_process_grants_total", limit=name) == 2
    units = metrics["sluice_process_granted_units"]
    assert value(units, "sluice_process_granted_units_total", limit=name) == 2
    timeouts = metrics["sluice_process_timeouts"]
    assert value(timeouts, "sluice_process_timeouts_total", limit=name) == 1
    lost = metrics["sluice_process_leases_lost"]
    assert value(lost, "sluice_process_leases_lost_total", limit=name) == 1
    waits = metrics["sluice_process_wait_seconds"]
    assert value(waits, "sluice_process_wait_seconds_count", limit=name) == 2


def test_flow_metrics_describe_the_recent_runs_task_runs_by_final_state_and_their_waits(
    client: TestClient, limits: Limits
) -> None:
    limits.create(_flows.LIMIT, slots=1)
    _flows.pipeline()
    for _ in range(2):  # read from the run history at each scrape: the same twice
        metrics = scrape(client)
    flow = "pipeline"
    runs = metrics["sluice_flow_recent_runs"]
    assert value(runs, "sluice_flow_recent_runs", flow=flow, state="Completed") == 1
    assert value(runs, "sluice_flow_recent_runs", flow=flow, state="Failed") == 0
    tasks = metrics["sluice_flow_recent_task_runs"]
    assert value(tasks, "sluice_flow_recent_task_runs", flow=flow, state="Completed") == 4
    assert value(tasks, "sluice_flow_recent_task_runs", flow=flow, state="Failed") == 1
    in_progress = metrics["sluice_flow_runs_in_progress"]
    assert value(in_progress, "sluice_flow_runs_in_progress", flow=flow) == 0
    name = "sluice_flow_recent_task_wait_seconds"
    count = metrics[name + "_gcount"]
    assert value(count, name + "_gcount", flow=flow) == _flows.TASK_RUNS
    detail = sluice.runs.get(sluice.runs.list(1)[0].id)
    from sluice.flows.why import task_times

    total = sum(task_times(t.states, detail.run.ended_at)[0] for t in detail.task_runs)
    assert value(metrics[name + "_gsum"], name + "_gsum", flow=flow) == pytest.approx(total)
    buckets = metrics[name]
    assert value(buckets, name + "_bucket", flow=flow, le="+Inf") == _flows.TASK_RUNS


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
