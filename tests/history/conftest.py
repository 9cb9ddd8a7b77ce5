"""ONE table of run-history backends that the history conformance tests run against.

To add a backend, append a :class:`HistoryEntry` whose factory yields a store URL
no other test uses (e.g. reuse the store factories of ``tests/conftest.py``)::

    from conftest import _redis_store
    HistoryEntry("redis", _redis_store)

``SLUICE_TEST_STORES=memory,sqlite`` narrows a local run, as for the limits stores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import (
    _memory_store,
    _postgres_store,
    _redis_store,
    _sqlite_store,
    selected_store_ids,
)
from sluice.store import open_history
from sluice.store.history import HistoryStore


@dataclass(frozen=True)
class HistoryEntry:
    """One history backend under test."""

    id: str
    make: Callable[[Path], AbstractContextManager[str]]
    """Given the test's tmp_path, a context manager yielding a fresh store URL."""


HISTORY_STORES: list[HistoryEntry] = [
    HistoryEntry("memory", _memory_store),
    HistoryEntry("sqlite", _sqlite_store),
    HistoryEntry("redis", _redis_store),
    HistoryEntry("postgres", _postgres_store),
]


def _selected() -> list[HistoryEntry]:
    ids = selected_store_ids()
    return [entry for entry in HISTORY_STORES if entry.id in ids]


_ALL = _selected()


@pytest.fixture(params=_ALL, ids=[entry.id for entry in _ALL])
def history_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store URL for every history backend in the table."""
    entry: HistoryEntry = request.param
    with entry.make(tmp_path) as url:
        yield url


@pytest.fixture
def history(history_url: str) -> HistoryStore:
    """The history store of the test's fresh store URL."""
    return open_history(history_url)
