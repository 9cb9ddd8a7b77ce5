"""The Grafana dashboard (docs/grafana/sluice.json) and the Prometheus alert rules
(docs/prometheus/sluice-alerts.yml) load, and name only metrics the real exporter exports.

``promtool`` checks the rules, runs their unit tests (docs/prometheus/sluice-alerts.test.yml)
and parses every dashboard query, where it is installed; without it those tests skip,
saying how to install it. The rest does not need it: a small tokenizer (``_promql``) reads
the metric names out of every expression, which a scrape of the exporter must contain.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conformance._helpers import Attempt, wait_for_waiters
from conftest import require_module, skip_or_fail
from sluice import Limits

from . import _flows
from ._exporter import exporter
from ._promql import PromQLError, label_values_metrics, metric_names

yaml = require_module("yaml", "dev")

DOCS = Path(__file__).resolve().parents[2] / "docs"
RULES = DOCS / "prometheus" / "sluice-alerts.yml"
RULE_TESTS = DOCS / "prometheus" / "sluice-alerts.test.yml"
DASHBOARD = DOCS / "grafana" / "sluice.json"
ALERTS = {
    "SluiceLimitSaturatedQueueGrowing",
    "SluiceWaiterStarved",
    "SluiceLeaseHeldTooLong",
    "SluiceRateBelowConfigured",
    "SluiceExporterCannotReadStore",
}
OPERATOR_METRICS = {
    "sluice_limit_oldest_waiter_age_seconds",
    "sluice_limit_oldest_lease_age_seconds",
    "sluice_store_last_successful_sample_age_seconds",
    "sluice_flow_runs_in_progress",
    "sluice_flow_recent_run_duration_seconds_bucket",
    "sluice_build_info",
}
"""The operator's metrics of issue 15: the dashboard shows each of them."""
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$instance": "localhost:9787",
    "$limit": ".*",
    "$flow": ".*",
}


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, those inside rows included."""
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(_panels(panel.get("panels", [])))
    return out


def _dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def _dashboard_exprs() -> list[str]:
    return [
        target["expr"]
        for panel in _panels(_dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


def _variable_queries() -> list[str]:
    queries = []
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def _referenced() -> dict[str, set[str]]:
    """Each metric name the rules or the dashboard read, with where."""
    where: dict[str, set[str]] = {}
    for rule in _rules():
        for name in metric_names(rule["expr"]):
            where.setdefault(name, set()).add(f"rule {rule['alert']}")
    for expr in _dashboard_exprs():
        for name in metric_names(expr):
            where.setdefault(name, set()).add("dashboard")
    for query in _variable_queries():
        for name in label_values_metrics(query):
            where.setdefault(name, set()).add("dashboard variable")
    return where


def _promtool() -> str:
    """The promtool to run (``PROMTOOL``, else the one on PATH), or skip saying how to get it
    (under CI=true, .ci/run provides it: its absence fails)."""
    found = shutil.which(os.environ.get("PROMTOOL", "promtool"))
    if found is None:
        skip_or_fail(
            "promtool is not installed: install it with `apt-get install prometheus` (Debian, "
            "Ubuntu) or from a Prometheus release (prometheus.io/download), or point "
            "PROMTOOL=/path/to/promtool at one"
        )
    return found


# --------------------------------------------------------------------------- the rules


def test_the_alert_rules_each_say_when_how_bad_and_what_to_look_at() -> None:
    rules = _rules()
    assert {rule["alert"] for rule in rules} == ALERTS
    for rule in rules:
        name = rule["alert"]
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), (name, rule["for"])
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description"}, name
        assert "{{ $" in annotations["summary"], name  # which limit, how long, how much
        commands = re.findall(r"`(sluice [a-z]+ ?[a-z]*)", annotations["description"])
        assert commands, f"{name}: the description names no sluice command to run"
        metric_names(rule["expr"])  # well-formed enough to read


def test_the_alert_rules_load_in_promtool() -> None:
    promtool = _promtool()
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout


def test_each_alert_fires_on_its_problem_and_not_on_a_healthy_limit_in_promtool() -> None:
    """docs/prometheus/sluice-alerts.test.yml: made-up histories, the alerts expected."""
    promtool = _promtool()
    tested = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULE_TESTS.parent,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr
    scenarios = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested_alerts = {t["alertname"] for s in scenarios for t in s["alert_rule_test"]}
    assert tested_alerts == ALERTS


# --------------------------------------------------------------------------- the dashboard


def test_the_dashboard_parses_and_every_panel_queries_the_chosen_prometheus() -> None:
    dashboard = _dashboard()
    assert dashboard["title"] and dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = _panels(dashboard["panels"])
    assert len({p["id"] for p in panels}) == len(panels)
    shown = [p for p in panels if p["type"] != "row"]
    assert len(shown) >= 10
    for panel in shown:
        assert panel["title"] and panel["description"], panel["id"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            metric_names(target["expr"])  # well-formed enough to read
    for query in _variable_queries():
        label_values_metrics(query)


def test_every_dashboard_query_parses_in_promtool(tmp_path: Path) -> None:
    """promtool has no command that parses a lone query, so each becomes a recording rule."""
    promtool = _promtool()
    rules = []
    for i, expr in enumerate(_dashboard_exprs()):
        for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
            expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
        assert "$" not in expr, expr
        rules.append({"record": f"sluice_dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dashboard_shows_each_operator_metric() -> None:
    shown = {name for name, where in _referenced().items() if "dashboard" in where}
    assert shown >= OPERATOR_METRICS, OPERATOR_METRICS - shown


# --------------------------------------------------------------------------- both, and /metrics


def test_the_rules_and_the_dashboard_name_only_metrics_the_exporter_exports(
    limits: Limits, store_url: str
) -> None:
    """A store with a holder, a waiter, a rate limit and a finished flow run: every metric
    a rule or a panel reads is in a scrape of the exporter on it."""
    limits.create(_flows.LIMIT, slots=1)
    _flows.pipeline()  # a finished flow run, with task runs that waited
    limits.create("db", slots=1, rate=100, burst=5)
    held = limits.acquire("db")
    waiter = Attempt(limits, "db", holder="waiter").start()
    wait_for_waiters(limits, "db", 1)
    try:
        with exporter(store_url) as e:
            exported = set(e.scrape())
    finally:
        held.release()
        waiter.result().release()
    referenced = _referenced()
    assert len(referenced) >= 15
    missing = {name: sorted(where) for name, where in referenced.items() if name not in exported}
    assert not missing, f"not exported: {missing}"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (limit, le) (rate(a_bucket{limit=~"$limit"}[$__rate_interval]))', {"a_bucket"}),
        (
            "x > 10 * (avg_over_time(y[1d] offset 1h) / rate(z_total[1d] offset 1h))",
            {"x", "y", "z_total"},
        ),
        ("max_over_time(x[5m:1m]) unless on(limit) group_left(flow) y", {"x", "y"}),
        ("sum(rate(a[5m])) without (instance) / ignoring(le) b", {"a", "b"}),
    ],
)
def test_the_tokenizer_reads_metric_names_not_labels_functions_or_keywords(
    expr: str, names: set[str]
) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    "expr", ["", "rate(x[5m]", "x)", 'x{a="b"', "frobnicate(x)", "x ; y", "rate(x[y])"]
)
def test_the_tokenizer_refuses_what_it_cannot_read(expr: str) -> None:
    with pytest.raises(PromQLError):
        metric_names(expr)
