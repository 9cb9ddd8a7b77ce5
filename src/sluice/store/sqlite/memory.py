"""The in-process store: the SQLite store's engine on a private in-memory database.

Every ``Limits("memory://NAME")`` in a process shares one store per NAME; it
vanishes with the process and is never seen by another one. It runs exactly
the decision logic of :mod:`sluice.store.sqlite.store` (so the two cannot disagree),
without lock files, sockets or process watches: every waiter is local.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Collection
from contextlib import AbstractContextManager

from sluice.store.base import StoreDiagnosis
from sluice.store.deadline import Deadline
from sluice.store.sqlite.history import SQLiteHistory
from sluice.store.sqlite.ipc import ProcessInfo
from sluice.store.sqlite.schema import SCHEMA_VERSION, read_diagnosis
from sluice.store.sqlite.store import SQLiteStore
from sluice.store.sqlite.tx import Tx

__all__ = ["MemoryStore"]


class MemoryStore(SQLiteStore):
    """Limits kept in this process's memory; for tests and single-process programs."""

    safety_interval = 30.0

    def __init__(self, url: str) -> None:
        super().__init__(url, ":memory:")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)

    def _begin(self, conn: sqlite3.Connection, deadline: Deadline) -> None:
        conn.execute("BEGIN IMMEDIATE")  # its threads queue on the store's mutex first

    def _end_write(self) -> None:
        pass

    def _credit(self, tx: Tx, waited: float) -> bool:
        return False  # no other process can stall it

    def _credited(self) -> None:
        pass

    def _stall_began(self) -> float | None:
        return None

    def _gone_now(self, process_id: str, host: str) -> bool:
        return False

    def _reader(self) -> tuple[threading.Lock, sqlite3.Connection]:
        with self._mutex:  # one private database, one connection
            return self._mutex, self._connection(Deadline(self.step_timeout))

    def _register(self, tx: Tx) -> ProcessInfo:
        info = ProcessInfo(uuid.uuid4().hex[:20], os.getpid(), socket.gethostname())
        tx.run(
            "INSERT INTO sluice_processes (id, pid, host, wake_addr, started_at)"
            " VALUES (?, ?, ?, 'local', ?)",
            (info.id, info.pid, info.host, tx.now),
        )
        return info

    def _dead_processes(self, tx: Tx, process_ids: Collection[str]) -> set[str]:
        return set()  # every holder and waiter is this process

    def _gone(self, process_id: str, host: str) -> bool:
        return False

    def _watch(self, ticket_id: str, pids: Collection[int]) -> None:
        pass

    def _unwatch(self, ticket_id: str) -> None:
        pass

    def _send(self, targets: list[tuple[str, list[str]]]) -> None:
        pass

    def _close_ipc(self) -> None:
        pass

    def diagnose(self) -> StoreDiagnosis:
        """Read the schema version and expired leases of this process's private database."""
        detail = f"in-process store {self.url} (SQLite {sqlite3.sqlite_version}), this process only"
        with self._mutex:
            if self._conn is None:  # not used yet: no schema to report
                return StoreDiagnosis("memory", detail, None, False, 0)
            version, expired = read_diagnosis(self._conn, time.time())
        return StoreDiagnosis("memory", detail, version, version == SCHEMA_VERSION, expired)


def from_url(url: str) -> MemoryStore:
    """Open a new memory store (the registry in sluice.store shares it per URL)."""
    return MemoryStore(url)


class MemoryHistory(SQLiteHistory):
    """Flow runs, task runs and states in a private in-memory database; gone with the process."""

    def __init__(self, url: str) -> None:
        super().__init__(url, ":memory:")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)

    def _write_lock(self) -> AbstractContextManager[object]:
        return contextlib.nullcontext()


def history_from_url(url: str) -> MemoryHistory:
    """The in-process history of ``memory://NAME`` (one per NAME)."""
    return MemoryHistory(url)
