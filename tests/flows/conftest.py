"""Flows under test run on a fresh store per test: SLUICE_URL points at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import STORES, selected_store_ids
from sluice import Limits

_STORES = {entry.id: entry.make for entry in STORES}
_WANTED = list(selected_store_ids()) or ["memory"]
_SHARED = [entry.id for entry in STORES if entry.cross_process and entry.id in _WANTED]


@pytest.fixture(params=_WANTED)
def flow_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh store (every kind in the table) that flows in this test use, through SLUICE_URL."""
    with _STORES[request.param.strip()](tmp_path) as url:
        monkeypatch.setenv("SLUICE_URL", url)
        monkeypatch.setenv("SLUICE_PROGRESS", "0")
        yield url


_SHARED_PARAMS: list[object] = [*_SHARED] or [
    pytest.param(None, marks=pytest.mark.skip("no cross-process store"))
]


@pytest.fixture(params=_SHARED_PARAMS)
def process_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh store that several processes share (every such kind in the table), through
    SLUICE_URL: for flows whose task runs (or whole flows) run in other processes."""
    with _STORES[request.param](tmp_path) as url:
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
