-- Sluice schema for the SQLite and memory stores (schema version 3).
-- Created on first use, inside one write transaction; SCHEMA_VERSION in
-- sqlite.py must match the value inserted into sluice_meta below.
--
-- Units held are never kept as counters: a limit's in_use is the sum of its
-- sluice_holdings rows, so no admin action can leave a count wrong.

CREATE TABLE IF NOT EXISTS sluice_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Sluice's own facts: schema_version, and fence, the store-wide count of grants:
-- each lease is named <ticket or request id>.<fence>, a number that grows with
-- every grant (a fencing token a protected resource can compare).

-- One row per limit. tat is the GCRA theoretical arrival time (0 = full bucket).
-- id is never reused, so holdings of a deleted limit can't leak into a new one.
-- The totals (grants ... wait_seconds) count what the limit did since it was
-- created, for every process; queued_waits holds, comma-separated, the wait
-- histogram of grants that had queued (every other grant waited 0).
CREATE TABLE IF NOT EXISTS sluice_limits (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    slots       INTEGER,
    rate        REAL,
    burst       INTEGER,
    active      INTEGER NOT NULL DEFAULT 1,
    lease_ttl   REAL NOT NULL,
    tat         REAL NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    grants        INTEGER NOT NULL DEFAULT 0,
    granted_units INTEGER NOT NULL DEFAULT 0,
    timeouts      INTEGER NOT NULL DEFAULT 0,
    reclaimed     INTEGER NOT NULL DEFAULT 0,
    queued_waits  TEXT NOT NULL DEFAULT '',
    wait_seconds  REAL NOT NULL DEFAULT 0
);

-- Processes that hold leases or wait; each holds an OS lock on its own lock
-- file for as long as it lives, which is how others tell it is gone.
CREATE TABLE IF NOT EXISTS sluice_processes (
    id          TEXT PRIMARY KEY,
    pid         INTEGER NOT NULL,
    host        TEXT NOT NULL,
    wake_addr   TEXT NOT NULL,
    started_at  REAL NOT NULL
);

-- limit_ids lists the limits the lease holds units of ("3,7"), so a release
-- deletes its holdings by primary key and no second index is written; names
-- lists every active limit it was granted on. A lease granted to a ticket is
-- named <ticket id>.<n> and remembers the ticket and its place (ticket_seq).
-- claimed = 0: handed to another process's ticket and not yet claimed by it;
-- it expires CLAIM_WINDOW after the hand-off, and then its ticket gets the grant
-- back. A 'rate' row is a grant of rate units handed to a ticket and not yet
-- claimed (nothing to release: claiming deletes it).
CREATE TABLE IF NOT EXISTS sluice_leases (
    id          TEXT PRIMARY KEY,
    limit_ids   TEXT NOT NULL,
    names       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    process_id  TEXT NOT NULL,
    holder      TEXT NOT NULL,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    occupy      INTEGER NOT NULL,
    lease_ttl   REAL NOT NULL,
    acquired_at REAL NOT NULL,
    expires_at  REAL NOT NULL,
    ticket_id   TEXT NOT NULL DEFAULT '',
    ticket_seq  INTEGER,
    claimed     INTEGER NOT NULL DEFAULT 1
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sluice_leases_by_ticket ON sluice_leases (ticket_id)
    WHERE ticket_id != '';

-- The units a lease took on each active limit it named.
CREATE TABLE IF NOT EXISTS sluice_holdings (
    limit_id    INTEGER NOT NULL,
    lease_id    TEXT NOT NULL,
    units       INTEGER NOT NULL,
    PRIMARY KEY (limit_id, lease_id)
) WITHOUT ROWID;

-- Who held a limit's units, and when: one row per lease and limit, written when the
-- lease ends (released, reclaimed, revoked). Claimed leases only (an unclaimed
-- hand-off held nothing for anyone). `run why` reads it; the newest HELD_KEEP rows
-- are kept (sluice/store/sqlite/engine.py).
CREATE TABLE IF NOT EXISTS sluice_held (
    limit_id    INTEGER NOT NULL,
    holder      TEXT NOT NULL,
    units       INTEGER NOT NULL,
    acquired_at REAL NOT NULL,
    released_at REAL NOT NULL,
    lease_id    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sluice_held_by_limit ON sluice_held (limit_id, released_at);

-- The audit record of admin actions (update, enable, disable, reset, delete), written
-- in the action's own transaction; kept by limit name, so it outlives a deleted limit.
-- who and changes are JSON (sluice/store/audit.py); the newest ADMIN_KEEP rows per
-- name are kept (sluice/store/sqlite/audit.py).
CREATE TABLE IF NOT EXISTS sluice_admin (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    limit_name  TEXT NOT NULL,
    action      TEXT NOT NULL,
    at          REAL NOT NULL,
    who         TEXT NOT NULL,
    changes     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sluice_admin_by_limit ON sluice_admin (limit_name, id);

-- Waiting requests; seq is the store-wide arrival order (never reused). A ticket
-- stands for `wanted` more grants of the same request. arrivals lists when they
-- arrived, oldest first, as "time:count,time:count" (empty: all at created_at),
-- so each grant's wait is counted from its own arrival.
CREATE TABLE IF NOT EXISTS sluice_tickets (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    process_id  TEXT NOT NULL,
    holder      TEXT NOT NULL,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    occupy      INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    names       TEXT NOT NULL,     -- every limit name asked for, comma-separated
    limit_count INTEGER NOT NULL,  -- how many queues it is in
    lease_ttl   REAL NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL,
    wanted      INTEGER NOT NULL DEFAULT 1,
    arrivals    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS sluice_tickets_by_process ON sluice_tickets (process_id);

-- One row per (limit, waiting ticket): the per-limit FIFO queues. stalled = 1:
-- a grant handed to the ticket lapsed unclaimed; hand-offs pass it by until its
-- process asks about it again (it keeps its place).
CREATE TABLE IF NOT EXISTS sluice_queue (
    limit_id    INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    ticket_id   TEXT NOT NULL,
    occupy      INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    stalled     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (limit_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sluice_queue_by_ticket ON sluice_queue (ticket_id);

INSERT OR REPLACE INTO sluice_meta (key, value) VALUES ('schema_version', '5');
INSERT OR IGNORE INTO sluice_meta (key, value) VALUES ('fence', '0');
