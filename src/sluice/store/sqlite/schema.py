"""The SQLite database's layout: creating and migrating its schema, and reading it for doctor.

``schema.sql`` holds the tables; :data:`SCHEMA_VERSION` must match the version
it records. Migrations from older versions run in the same write transaction
that opens the store.
"""

from __future__ import annotations

import os
import sqlite3
import time
from importlib import resources

from sluice.errors import StoreError, StoreUnavailable
from sluice.store.base import StoreDiagnosis
from sluice.store.sqlite.stall import stall_began

__all__ = [
    "SCHEMA_VERSION",
    "check_creatable",
    "create_schema",
    "diagnose_file",
    "read_diagnosis",
    "read_version",
]

SCHEMA_VERSION = 5
_MIGRATE_1_TO_2 = (
    *(
        f"ALTER TABLE sluice_limits ADD COLUMN {column}"
        for column in (
            "grants INTEGER NOT NULL DEFAULT 0",
            "granted_units INTEGER NOT NULL DEFAULT 0",
            "timeouts INTEGER NOT NULL DEFAULT 0",
            "reclaimed INTEGER NOT NULL DEFAULT 0",
            "queued_waits TEXT NOT NULL DEFAULT ''",
            "wait_seconds REAL NOT NULL DEFAULT 0",
        )
    ),
    "UPDATE sluice_meta SET value = '2' WHERE key = 'schema_version'",
)
"""Schema version 1 (no totals) to 2: the limits' totals start at zero."""
_MIGRATE_2_TO_3 = (
    "ALTER TABLE sluice_tickets ADD COLUMN wanted INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE sluice_tickets ADD COLUMN arrivals TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE sluice_queue ADD COLUMN stalled INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE sluice_leases ADD COLUMN ticket_id TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE sluice_leases ADD COLUMN ticket_seq INTEGER",
    "ALTER TABLE sluice_leases ADD COLUMN claimed INTEGER NOT NULL DEFAULT 1",
    "CREATE INDEX IF NOT EXISTS sluice_leases_by_ticket ON sluice_leases (ticket_id)"
    " WHERE ticket_id != ''",
    "INSERT OR IGNORE INTO sluice_meta (key, value) VALUES ('fence', '0')",
    "UPDATE sluice_meta SET value = '3' WHERE key = 'schema_version'",
)
"""Schema version 2 to 3: tickets wanting several grants, and grants waiting to be claimed.
Every existing ticket wants one grant and every existing lease is claimed."""
_MIGRATE_3_TO_4 = (
    "CREATE TABLE IF NOT EXISTS sluice_held (limit_id INTEGER NOT NULL, holder TEXT NOT NULL,"
    " units INTEGER NOT NULL, acquired_at REAL NOT NULL, released_at REAL NOT NULL,"
    " lease_id TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS sluice_held_by_limit ON sluice_held (limit_id, released_at)",
    "UPDATE sluice_meta SET value = '4' WHERE key = 'schema_version'",
)
"""Schema version 3 to 4: the record of who held each limit's units, and when (empty:
leases that ended before the upgrade were not recorded)."""
_MIGRATE_4_TO_5 = (
    "CREATE TABLE IF NOT EXISTS sluice_admin (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " limit_name TEXT NOT NULL, action TEXT NOT NULL, at REAL NOT NULL, who TEXT NOT NULL,"
    " changes TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS sluice_admin_by_limit ON sluice_admin (limit_name, id)",
    "UPDATE sluice_meta SET value = '5' WHERE key = 'schema_version'",
)
"""Schema version 4 to 5: the audit record of admin actions (empty: actions before the
upgrade were not recorded)."""


def create_schema(conn: sqlite3.Connection, url: str) -> None:
    """Create the schema in an open write transaction, or migrate it to this version."""
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='sluice_meta'"
    ).fetchone()
    if row is not None:
        version = conn.execute(
            "SELECT value FROM sluice_meta WHERE key='schema_version'"
        ).fetchone()
        if version is not None and int(version[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"store {url} has schema version {version[0]}, newer than this "
                f"Sluice understands ({SCHEMA_VERSION}); upgrade Sluice"
            )
        if version is not None and int(version[0]) == SCHEMA_VERSION:
            return
        if version is not None and int(version[0]) in (1, 2, 3, 4):
            steps = (_MIGRATE_1_TO_2, _MIGRATE_2_TO_3, _MIGRATE_3_TO_4, _MIGRATE_4_TO_5)[
                int(version[0]) - 1 :
            ]
            for migration in steps:
                for statement in migration:
                    conn.execute(statement)
            return
    script = resources.files("sluice.store.sqlite").joinpath("schema.sql").read_text()
    code = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    for statement in code.split(";"):
        if statement.strip():
            conn.execute(statement)


def read_version(path: str) -> int | None:
    """The schema version a database file records (None: no file, or no Sluice schema),
    read in a WAL read transaction: it never waits for a writer."""
    if not os.path.exists(path):
        return None
    try:
        conn = sqlite3.connect(path, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        return read_diagnosis(conn, 0.0)[0]
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def diagnose_file(url: str, path: str) -> StoreDiagnosis:
    """Read a database file's schema version and expired leases on a private, query-only
    connection; create nothing."""
    if not os.path.exists(path):
        check_creatable(url, path)
        return StoreDiagnosis(
            "sqlite",
            f"SQLite {sqlite3.sqlite_version}, no database yet at {path} (created on first use)",
            None,
            False,
            0,
        )
    try:
        conn = sqlite3.connect(path, timeout=30.0)
    except sqlite3.Error as exc:
        raise StoreUnavailable(
            f"cannot open SQLite store {url}: {exc}; check the path and its permissions"
        ) from exc
    try:
        conn.execute("PRAGMA query_only=1")
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).upper()
        # A lease live when a stall under way began is not expired: the stall is credited.
        began = stall_began(path)
        version, expired = read_diagnosis(conn, time.time() if began is None else began)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read SQLite store {url}: {exc}") from exc
    finally:
        conn.close()
    return StoreDiagnosis(
        "sqlite",
        f"SQLite {sqlite3.sqlite_version}, {mode}, {path}",
        version,
        version == SCHEMA_VERSION,
        expired,
        _write_error(path),
    )


def _write_error(path: str) -> str | None:
    """Why a write to the database would fail here, or None: a write transaction is begun
    and rolled back at once (waiting at most a second for a writer in progress)."""
    side = os.path.dirname(path)
    for needed in (path, side):
        if not os.access(needed, os.W_OK):
            return f"{needed} is not writable by this user"
    try:
        conn = sqlite3.connect(path, timeout=1.0, isolation_level=None)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            return None  # another process is writing: writes work, just not this instant
        return str(exc)
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        conn.close()
    return None


def read_diagnosis(conn: sqlite3.Connection, now: float) -> tuple[int | None, int]:
    """(schema version or None, leases expired by ``now``) of a Sluice database."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "sluice_meta" not in tables:
        return None, 0
    row = conn.execute("SELECT value FROM sluice_meta WHERE key='schema_version'").fetchone()
    version = int(row[0]) if row is not None else None
    expired = 0
    if "sluice_leases" in tables:
        expired = int(
            conn.execute(
                "SELECT COUNT(*) FROM sluice_leases WHERE expires_at <= ?",
                (now,),
            ).fetchone()[0]
        )
    return version, expired


def check_creatable(url: str, path: str) -> None:
    """Raise StoreUnavailable unless the database file could be created at ``path``."""
    ancestor = os.path.dirname(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
        raise StoreUnavailable(
            f"cannot create SQLite store {url}: {ancestor} is not a writable directory; "
            "check the path and its permissions"
        )
