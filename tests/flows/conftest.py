"""Flows under test run on a fresh store per test: SLUICE_URL points at it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import _memory_store, _postgres_store, _redis_store, _sqlite_store
from sluice import Limits

_STORES = {
    "memory": _memory_store,
    "sqlite": _sqlite_store,
    "redis": _redis_store,
    "postgres": _postgres_store,
}
_WANTED = [
    s
    for s in (os.environ.get("SLUICE_TEST_STORES", "") or ",".join(_STORES)).split(",")
    if s.strip() in _STORES
] or ["memory"]


@pytest.fixture(params=_WANTED)
def flow_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh store (every kind in the table) that flows in this test use, through SLUICE_URL."""
    with _STORES[request.param.strip()](tmp_path) as url:
        monkeypatch.setenv("SLUICE_URL", url)
        monkeypatch.setenv("SLUICE_PROGRESS", "0")
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite store that flows in this test use (for tests needing one file)."""
    url = f"sqlite:///{tmp_path / 'sluice.db'}"
    monkeypatch.setenv("SLUICE_URL", url)
    monkeypatch.setenv("SLUICE_PROGRESS", "0")
    return url


@pytest.fixture
def admin(flow_url: str) -> Iterator[Limits]:
    """A Limits client on the test's store, to create limits."""
    with Limits(flow_url) as limits:
        yield limits
