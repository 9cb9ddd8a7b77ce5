"""The exporter's operator metrics, scraped over HTTP from the real ``sluice metrics serve``
on every store: waiter and lease ages, its own health, build info, flow runs in progress
and their durations, and values that stay the same when the exporter restarts."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import sluice
import sluice.runs
from conformance._helpers import Attempt, wait_for_waiters, wait_until
from conftest import REDIS_HOST, StoreEntry, cross_process_only, require_module
from sluice import AcquireTimeout, Limits, flow

from . import _flows
from ._exporter import Exporter, Samples, exporter, value

WAITER_AGE = "sluice_limit_oldest_waiter_age_seconds"
LEASE_AGE = "sluice_limit_oldest_lease_age_seconds"
SAMPLE_AGE = "sluice_store_last_successful_sample_age_seconds"
CLOCK_SLACK = 0.05
"""Seconds a store's clock may read ahead of this process's time.time() (same host)."""


def _above(e: Exporter, name: str, floor: float, **labels: str) -> float | None:
    """The scraped value if it is above ``floor`` (for wait_until)."""
    found = e.value(name, **labels)
    return found if found is not None and found > floor else None


def test_the_oldest_waiter_age_grows_while_it_waits_and_drops_to_0_once_served(
    limits: Limits, store_url: str
) -> None:
    limits.create("db", slots=1)
    held = limits.acquire("db")
    before_first = time.time()
    first = Attempt(limits, "db", holder="first").start()
    wait_for_waiters(limits, "db", 1)
    with exporter(store_url) as e:
        assert e.value(WAITER_AGE, limit="other") is None
        age = wait_until(lambda: _above(e, WAITER_AGE, 0.0, limit="db"), what="a waiter's age")
        assert age <= time.time() - before_first + CLOCK_SLACK
        grown = wait_until(
            lambda: _above(e, WAITER_AGE, age + 0.5, limit="db"), what="the age to grow by 0.5 s"
        )
        assert grown <= time.time() - before_first + CLOCK_SLACK
        # A newer waiter (its own ticket: another holder) does not make the oldest younger.
        second = Attempt(limits, "db", holder="second").start()
        wait_for_waiters(limits, "db", 2)
        e.sampler.sample(force=True)
        assert (e.value(WAITER_AGE, limit="db") or 0.0) >= grown
        held.release()
        first.result().release()
        second.result().release()
        wait_until(lambda: e.value(WAITER_AGE, limit="db") == 0.0, what="no waiter: age 0")


def test_the_oldest_lease_age_is_the_longest_held_leases(limits: Limits, store_url: str) -> None:
    limits.create("db", slots=2)
    with exporter(store_url) as e:
        assert e.value(LEASE_AGE, limit="db") == 0.0  # nobody holds it
        before_a = time.time()
        a = limits.acquire("db")
        age_a = wait_until(lambda: _above(e, LEASE_AGE, 1.0, limit="db"), what="A held 1 s")
        assert age_a <= time.time() - before_a + CLOCK_SLACK
        before_b = time.time()
        b = limits.acquire("db")
        e.sampler.sample(force=True)
        with_b = e.value(LEASE_AGE, limit="db") or 0.0
        assert age_a <= with_b <= time.time() - before_a + CLOCK_SLACK  # still A's
        a.release()
        e.sampler.sample(force=True)
        b_only = e.value(LEASE_AGE, limit="db") or 0.0
        assert 0.0 < b_only <= time.time() - before_b + CLOCK_SLACK < with_b  # B's, younger
        b.release()
        e.sampler.sample(force=True)
        assert e.value(LEASE_AGE, limit="db") == 0.0


_open = threading.Event()


@flow
def held_open() -> str:
    """A flow run that stays in progress until the test lets it end."""
    _open.wait(30)
    return "done"


def test_flow_runs_in_progress_count_a_running_flow_run_and_its_duration_once_ended(
    limits: Limits, store_url: str
) -> None:
    _open.clear()
    runner = threading.Thread(target=held_open, name="held-open-flow")
    with exporter(store_url) as e:
        assert e.value("sluice_flow_runs_in_progress", flow="held_open") is None  # none yet
        runner.start()
        try:
            wait_until(
                lambda: e.value("sluice_flow_runs_in_progress", flow="held_open") == 1.0,
                what="the flow run in progress",
            )
            samples = e.scrape()
            assert (
                value(samples, "sluice_flow_recent_runs", flow="held_open", state="Completed")
                is None
            )
            assert value(samples, "sluice_flow_history_up") == 1.0
        finally:
            _open.set()
            runner.join(30)
        wait_until(
            lambda: e.value("sluice_flow_runs_in_progress", flow="held_open") == 0.0,
            what="the flow run to have ended",
        )
        samples = e.scrape()
    (run,) = sluice.runs.list(1)
    assert run.started_at is not None and run.ended_at is not None
    took = run.ended_at - run.started_at
    name = "sluice_flow_recent_runs"
    assert value(samples, name, flow="held_open", state="Completed") == 1.0
    assert value(samples, name, flow="held_open", state="Failed") == 0.0
    durations = "sluice_flow_recent_run_duration_seconds"
    assert value(samples, durations + "_gcount", flow="held_open") == 1.0
    assert value(samples, durations + "_gsum", flow="held_open") == pytest.approx(took)
    assert value(samples, durations + "_bucket", flow="held_open", le="+Inf") == 1.0
    first_bound = "1.0" if took <= 1.0 else "86400.0"
    assert value(samples, durations + "_bucket", flow="held_open", le=first_bound) == 1.0


def _store_derived(samples: Samples) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample but those that depend on when they are read (ages) or on what this
    exporter saw before (the delivered rate over its own samples)."""
    return {
        (name, tuple(sorted(s.labels.items()))): s.value
        for name, found in samples.items()
        if not name.endswith("_age_seconds") and "delivered_rate" not in name
        for s in found
    }


def test_store_totals_and_flow_metrics_are_the_same_after_an_exporter_restart(
    limits: Limits, store_url: str
) -> None:
    limits.create(_flows.LIMIT, slots=1)
    _flows.pipeline()
    limits.create("db", slots=1)
    with limits.concurrency("db"), pytest.raises(AcquireTimeout):
        limits.acquire("db", timeout=0.05)
    held = limits.acquire("db")  # held through both exporters' lives
    with exporter(store_url) as e:
        before = e.scrape()
    with exporter(store_url) as e:
        after = e.scrape()
    held.release()
    assert value(before, "sluice_limit_grants_total", limit="db") == 2.0
    assert value(before, "sluice_limit_timeouts_total", limit="db") == 1.0
    assert value(before, "sluice_limit_wait_seconds_count", limit=_flows.LIMIT) == 6.0  # 4 + 2
    assert value(before, "sluice_flow_recent_runs", flow="pipeline", state="Completed") == 1.0
    assert value(before, "sluice_flow_recent_task_runs", flow="pipeline", state="Failed") == 1.0
    assert _store_derived(after) == _store_derived(before)


def test_build_info_names_the_version_python_and_store_kind(
    store_url: str, store_entry: StoreEntry
) -> None:
    kind = {"postgres": "postgresql"}.get(store_entry.id, store_entry.id)
    with exporter(store_url) as e:
        samples = e.scrape()
    (info,) = samples["sluice_build_info"]
    assert info.value == 1.0
    assert info.labels == {
        "version": sluice.__version__,
        "python": platform.python_version(),
        "store": kind,
    }


def test_the_last_successful_sample_is_at_most_two_intervals_old(store_url: str) -> None:
    with exporter(store_url, interval=0.25) as e:
        for _ in range(3):
            samples = e.scrape()
            assert value(samples, "sluice_store_up") == 1.0
            assert 0.0 <= (value(samples, SAMPLE_AGE) or -1.0) < 2 * 0.25 + 0.5


def test_on_an_unreachable_store_the_last_successful_sample_age_grows_from_the_start() -> None:
    """A real Redis URL nothing answers (port 1 of loopback): no sample ever succeeds."""
    require_module("redis", "redis")
    with exporter(f"redis://{REDIS_HOST}:1/0", interval=0.25) as e:
        samples = e.scrape()
        assert value(samples, "sluice_store_up") == 0.0
        first = value(samples, SAMPLE_AGE)
        assert first is not None and 0.0 <= first <= time.time() - e.started_at
        later = wait_until(lambda: _above(e, SAMPLE_AGE, first + 0.5), what="the age to grow")
        assert later <= time.time() - e.started_at
        assert e.value("sluice_flow_history_up") == 0.0


def test_metric_names_follow_prometheus_conventions_and_say_what_they_are(
    limits: Limits, store_url: str
) -> None:
    limits.create(_flows.LIMIT, slots=1, rate=100)
    _flows.pipeline()
    with exporter(store_url) as e:
        text = e.text()
    families = list(text_string_to_metric_families(text))
    assert families
    for family in families:
        assert re.fullmatch(r"sluice_[a-z0-9_]+", family.name), family.name
        assert len(family.documentation.split()) >= 5, family.name  # a HELP that says what
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        else:
            assert not family.name.endswith("_total"), family.name
        if "seconds" in family.name or family.name.endswith(("_age", "_duration", "_wait")):
            assert family.name.endswith(("_seconds", "_seconds_gcount", "_seconds_gsum")), (
                family.name
            )
        for sample in family.samples:
            assert all(re.fullmatch(r"[a-z_]+", label) for label in sample.labels), sample


def _serve(store_url: str, tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    """``sluice metrics serve --port 0`` in a child process, and its /metrics address."""
    sluice_cli = Path(sys.executable).with_name("sluice")
    proc = subprocess.Popen(
        [str(sluice_cli), "metrics", "serve", "--port", "0", "--url", store_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SLUICE_HOME": str(tmp_path / "home")},
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+/metrics)", first)
    if match is None:
        proc.kill()
        pytest.fail(f"no address in {first!r}: {proc.communicate()}")
    return proc, match.group(1)


def _scrape(url: str) -> Samples:
    def attempt() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                text: str = response.read().decode()
                return text
        except OSError:
            return None

    samples: Samples = {}
    for family in text_string_to_metric_families(wait_until(attempt, 15, f"an answer from {url}")):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


@pytest.mark.slow
@cross_process_only
def test_the_served_exporter_stopped_and_started_again_reports_the_same_totals(
    store_url: str, tmp_path: Path
) -> None:
    with Limits(store_url) as limits:
        limits.create(_flows.LIMIT, slots=1)
        _flows.pipeline()
        limits.acquire(_flows.LIMIT, occupy=1).release()
    samples = []
    for _ in range(2):  # the same command, started twice: the second is a restart
        proc, url = _serve(store_url, tmp_path)
        try:
            samples.append(_scrape(url))
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
    before, after = samples
    assert value(before, "sluice_limit_grants_total", limit=_flows.LIMIT) == 7.0  # 4 + 2 + 1
    assert value(before, "sluice_flow_recent_runs", flow="pipeline", state="Completed") == 1.0
    assert _store_derived(after) == _store_derived(before)
