"""SQLite schema versions: a store written by an older schema version is migrated in place."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from sluice import Limits, LimitTotals
from sluice.errors import StoreError
from sluice.store.sqlite.schema import SCHEMA_VERSION

TOTALS_COLUMNS = (
    "grants",
    "granted_units",
    "timeouts",
    "reclaimed",
    "queued_waits",
    "wait_seconds",
)


def _make_version(path: Path, version: int) -> None:
    """A database laid out as schema ``version`` (1: before limit totals; 2: before tickets
    for several requests and claims; 3: before the record of held units), holding one limit."""
    with Limits(f"sqlite:///{path}") as limits:
        limits.create("db", slots=3, rate=5.0)
    _downgrade(path, version)


def _downgrade(path: Path, version: int) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("DROP TABLE sluice_held")
        if version == 3:
            conn.execute("UPDATE sluice_meta SET value = '3' WHERE key = 'schema_version'")
            conn.commit()
            return
        conn.execute("DROP INDEX sluice_leases_by_ticket")
        for table, column in V3_COLUMNS:
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.execute("DELETE FROM sluice_meta WHERE key = 'fence'")
        if version == 1:
            for column in TOTALS_COLUMNS:
                conn.execute(f"ALTER TABLE sluice_limits DROP COLUMN {column}")
        conn.execute(
            "UPDATE sluice_meta SET value = ? WHERE key = 'schema_version'", (str(version),)
        )
        conn.commit()
    finally:
        conn.close()


V3_COLUMNS = (
    ("sluice_tickets", "wanted"),
    ("sluice_tickets", "arrivals"),
    ("sluice_queue", "stalled"),
    ("sluice_leases", "ticket_id"),
    ("sluice_leases", "ticket_seq"),
    ("sluice_leases", "claimed"),
)


@pytest.mark.skipif(
    sqlite3.sqlite_version_info < (3, 35, 0), reason="DROP COLUMN needs SQLite 3.35"
)
def test_a_version_1_store_is_migrated_keeping_its_limits(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _make_version(path, 1)
    with Limits(f"sqlite:///{path}") as limits:
        status = limits.inspect("db")
        assert (status.limit.slots, status.limit.rate) == (3, 5.0)
        assert status.totals == LimitTotals()
        limits.acquire("db").release()
        assert limits.inspect("db").totals.grants == 1
        assert limits._store.diagnose().schema_version == SCHEMA_VERSION == 5
    conn = sqlite3.connect(path)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(sluice_limits)")}
    finally:
        conn.close()
    assert set(TOTALS_COLUMNS) <= columns


@pytest.mark.skipif(
    sqlite3.sqlite_version_info < (3, 35, 0), reason="DROP COLUMN needs SQLite 3.35"
)
def test_a_version_2_store_is_migrated_keeping_its_holders_and_waiters(tmp_path: Path) -> None:
    """A live version-2 holder and waiter survive the migration: the waiter is served."""
    path = tmp_path / "v2.db"
    url = f"sqlite:///{path}"
    with Limits(url) as limits:
        limits.create("db", slots=1)
    conn = sqlite3.connect(path)
    try:
        _downgrade(path, 2)
        # A holder and a waiter as version 2 wrote them: a lease named by its request
        # id, a ticket wanting one grant.
        now = time.time()
        conn.execute(
            "INSERT INTO sluice_processes (id, pid, host, wake_addr, started_at)"
            " VALUES ('old-process', 1, 'nowhere', '@none', ?)",
            (now,),
        )
        conn.execute(
            "INSERT INTO sluice_leases (id, limit_ids, names, kind, process_id, holder, host,"
            " pid, occupy, lease_ttl, acquired_at, expires_at) VALUES ('old-lease', '1', 'db',"
            " 'concurrency', 'old-process', 'v2-holder', 'nowhere', 1, 1, 30, ?, ?)",
            (now, now + 30),
        )
        conn.execute(
            "INSERT INTO sluice_holdings (limit_id, lease_id, units) VALUES (1, 'old-lease', 1)"
        )
        conn.execute(
            "INSERT INTO sluice_tickets (seq, id, process_id, holder, host, pid, occupy, kind,"
            " names, limit_count, lease_ttl, created_at, expires_at) VALUES (1, 'old-ticket',"
            " 'old-process', 'v2-waiter', 'nowhere', 1, 1, 'concurrency', 'db', 1, 30, ?, ?)",
            (now, now + 30),
        )
        conn.execute(
            "INSERT INTO sluice_queue (limit_id, seq, ticket_id, occupy, kind)"
            " VALUES (1, 1, 'old-ticket', 1, 'concurrency')"
        )
        conn.commit()
    finally:
        conn.close()
    with Limits(url) as limits:
        status = limits.inspect("db")
        assert [h.holder for h in status.holders] == ["v2-holder"]
        assert [(w.holder, w.count, w.position) for w in status.waiters] == [("v2-waiter", 1, 1)]
        assert limits._store.diagnose().schema_version == SCHEMA_VERSION
        limits.update("db", slots=2)  # room for the old waiter: it is handed a grant
        status = limits.inspect("db")
        assert sorted(h.holder for h in status.holders) == ["v2-holder", "v2-waiter"]
        assert status.waiters == []


def test_a_version_3_store_is_migrated_and_records_who_held_its_units(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    url = f"sqlite:///{path}"
    _make_version(path, 3)
    conn = sqlite3.connect(path)
    try:  # a lease of another host's process, held across the upgrade
        now = time.time()
        conn.execute(
            "INSERT INTO sluice_processes (id, pid, host, wake_addr, started_at)"
            " VALUES ('old-process', 1, 'nowhere', '@none', ?)",
            (now,),
        )
        conn.execute(
            "INSERT INTO sluice_leases (id, limit_ids, names, kind, process_id, holder, host,"
            " pid, occupy, lease_ttl, acquired_at, expires_at) VALUES ('old-lease', '1', 'db',"
            " 'concurrency', 'old-process', 'before-upgrade', 'nowhere', 1, 1, 30, ?, ?)",
            (now, now + 30),
        )
        conn.execute(
            "INSERT INTO sluice_holdings (limit_id, lease_id, units) VALUES (1, 'old-lease', 1)"
        )
        conn.commit()
    finally:
        conn.close()
    with Limits(url) as limits:
        assert [h.holder for h in limits.inspect("db").holders] == ["before-upgrade"]
        assert limits._store.diagnose().schema_version == SCHEMA_VERSION
        with limits.concurrency("db", holder="after-upgrade"):
            pass
        assert limits.reset("db") == 1  # the old lease ends: revoked
        spans = limits._store.held_spans(["db"], now - 60, time.time() + 1)
        assert sorted(s.holder for s in spans) == ["after-upgrade", "before-upgrade"]
        assert all(s.released_at is not None and s.units == 1 for s in spans)


def test_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with Limits(f"sqlite:///{path}") as limits:
        limits.create("db", slots=1)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE sluice_meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with Limits(f"sqlite:///{path}") as limits, pytest.raises(StoreError, match="99"):
        limits.inspect("db")
    conn = sqlite3.connect(path)
    version = conn.execute("SELECT value FROM sluice_meta WHERE key='schema_version'").fetchone()
    conn.close()
    assert version == ("99",)
