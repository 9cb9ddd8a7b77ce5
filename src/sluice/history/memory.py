"""Run history in this process only, for ``memory://NAME`` stores: the SQLite tables in memory."""

from __future__ import annotations

import contextlib
import sqlite3
from contextlib import AbstractContextManager

from sluice.history.sqlite import SQLiteHistory

__all__ = ["MemoryHistory", "from_url"]


class MemoryHistory(SQLiteHistory):
    """Flow runs, task runs and states in a private in-memory database; gone with the process."""

    def __init__(self, url: str) -> None:
        super().__init__(url, ":memory:")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)

    def _write_lock(self) -> AbstractContextManager[object]:
        return contextlib.nullcontext()


def from_url(url: str) -> MemoryHistory:
    """The in-process history of ``memory://NAME`` (one per NAME)."""
    return MemoryHistory(url)
