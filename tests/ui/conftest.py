"""Fixtures for the dashboard and metrics tests: a fresh SQLite store and an app on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the dashboard needs pip install 'sluice[ui]'")
pytest.importorskip("prometheus_client", reason="metrics need pip install 'sluice[metrics]'")

from starlette.testclient import TestClient

from sluice import Limits
from sluice.report.sampler import Sampler
from sluice.ui.app import TOKEN_HEADER, Dashboard, create_app
from sluice.ui.views import RunIndex

TOKEN = "test-token-0123456789"


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite store, also the one flows in the test record their runs in."""
    url = f"sqlite:///{tmp_path / 'sluice.db'}"
    monkeypatch.setenv("SLUICE_URL", url)
    monkeypatch.setenv("SLUICE_PROGRESS", "0")
    return url


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
