"""Fixtures for the CLI tests.

Every CLI test runs in its own empty directory with ``SLUICE_URL`` unset and
``SLUICE_HOME`` inside ``tmp_path``, so no test sees a developer's store or files.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice import Limits


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLUICE_URL", raising=False)
    monkeypatch.delenv("SLUICE_DEBUG", raising=False)
    monkeypatch.setenv("SLUICE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A fresh SQLite store in this test's directory."""
    return f"sqlite:///{tmp_path / 'store' / 'sluice.db'}"


@pytest.fixture
def mem_url() -> str:
    """A fresh in-process store (shared by every run of the test runner in this process)."""
    return f"memory://cli-{uuid.uuid4().hex}"


@pytest.fixture
def limits(db_url: str) -> Iterator[Limits]:
    """A client on ``db_url``, to set up and check what the commands do."""
    client = Limits(db_url)
    try:
        yield client
    finally:
        client.close()
