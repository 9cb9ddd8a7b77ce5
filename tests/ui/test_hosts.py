"""A dashboard bound to loopback answers only to loopback host names (DNS rebinding)."""

from __future__ import annotations

from starlette.testclient import TestClient

from sluice.ui.app import LOOPBACK_HOSTS, Dashboard, create_app


def test_a_loopback_dashboard_refuses_other_host_names(dashboard: Dashboard) -> None:
    app = create_app(dashboard, sample_in_background=False, allowed_hosts=LOOPBACK_HOSTS)
    with TestClient(app, base_url="http://127.0.0.1:8787") as http:
        assert http.get("/api/limits").status_code == 200
        assert http.get("/api/limits", headers={"Host": "localhost:8787"}).status_code == 200
        rebound = http.get("/api/limits", headers={"Host": "attacker.example:8787"})
        assert rebound.status_code == 400
        assert http.get("/", headers={"Host": "attacker.example"}).status_code == 400


def test_without_allowed_hosts_any_host_name_is_served(dashboard: Dashboard) -> None:
    with TestClient(create_app(dashboard, sample_in_background=False)) as http:
        assert http.get("/api/limits", headers={"Host": "dashboard.internal"}).status_code == 200
