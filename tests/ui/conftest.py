"""Fixtures for the dashboard and metrics tests: a fresh store (every kind in the
table, as ``store_url`` in tests/conftest.py) and an app on it.

Tests that start other processes on the store (a served dashboard, a holder in a
child process) take only the stores several processes share: ``@cross_process_only``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conftest import require_module

require_module("starlette", "ui")
require_module("prometheus_client", "metrics")

from starlette.testclient import TestClient  # noqa: E402  (after the check above)

from sluice import Limits  # noqa: E402
from sluice.report.sampler import Sampler  # noqa: E402
from sluice.ui.app import TOKEN_HEADER, Dashboard, create_app  # noqa: E402
from sluice.ui.views import RunIndex  # noqa: E402

TOKEN = "test-token-0123456789"


@pytest.fixture
def store_url(store_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test's fresh store (every kind in the table), also the one flows in the test
    record their runs in."""
    monkeypatch.setenv("SLUICE_URL", store_url)
    monkeypatch.setenv("SLUICE_PROGRESS", "0")
    return store_url


@pytest.fixture
def limits(store_url: str) -> Iterator[Limits]:
    """A client on the test's store."""
    with Limits(store_url) as client:
        yield client


@pytest.fixture
def dashboard(store_url: str, limits: Limits) -> Dashboard:
    """The dashboard's state; its sampler samples on demand, at most every 50 ms."""
    return Dashboard(limits, Sampler(limits, interval=0.05), RunIndex(store_url), TOKEN)


@pytest.fixture
def client(dashboard: Dashboard) -> Iterator[TestClient]:
    """An HTTP client on the dashboard app (no background sampling thread)."""
    with TestClient(create_app(dashboard, sample_in_background=False)) as http:
        yield http


@pytest.fixture
def admin_headers() -> dict[str, str]:
    """The headers an admin page sends."""
    return {TOKEN_HEADER: TOKEN, "Content-Type": "application/json"}
