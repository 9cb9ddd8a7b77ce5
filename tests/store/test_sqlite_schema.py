"""SQLite schema versions: a store written by schema version 1 is migrated in place."""

from __future__ import annotations

import sqlite3
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


def _make_version_1(path: Path) -> None:
    """A database laid out as schema version 1 (before limit totals), holding one limit."""
    with Limits(f"sqlite:///{path}") as limits:
        limits.create("db", slots=3, rate=5.0)
    conn = sqlite3.connect(path)
    try:
        for column in TOTALS_COLUMNS:
            conn.execute(f"ALTER TABLE sluice_limits DROP COLUMN {column}")
        conn.execute("UPDATE sluice_meta SET value = '1' WHERE key = 'schema_version'")
        conn.commit()
    finally:
        conn.close()


@pytest.mark.skipif(
    sqlite3.sqlite_version_info < (3, 35, 0), reason="DROP COLUMN needs SQLite 3.35"
)
def test_a_version_1_store_is_migrated_keeping_its_limits(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _make_version_1(path)
    with Limits(f"sqlite:///{path}") as limits:
        status = limits.inspect("db")
        assert (status.limit.slots, status.limit.rate) == (3, 5.0)
        assert status.totals == LimitTotals()
        limits.acquire("db").release()
        assert limits.inspect("db").totals.grants == 1
        assert limits._store.diagnose().schema_version == SCHEMA_VERSION == 2
    conn = sqlite3.connect(path)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(sluice_limits)")}
    finally:
        conn.close()
    assert set(TOTALS_COLUMNS) <= columns


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
