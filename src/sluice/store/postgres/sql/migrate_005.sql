-- Migration 5: the record of who held each limit's units, and when, in schema @schema@.
-- Parameters: none (@schema@ is replaced by the quoted schema name before running).
-- Returns: nothing. Run once, inside the migration transaction that holds the
-- schema's advisory lock, after migration 4; the step functions are (re)installed
-- after the last migration (_release and _revoke then write to it).
--
-- held    one row per claimed lease and limit it held units of, written when the
--         lease ends (released, reclaimed, revoked); `run why` reads it by limit
--         and time. Renewals keep the newest 1,000,000 rows (renew.sql). Leases
--         that ended before the upgrade were not recorded.

CREATE TABLE @schema@.held (
    id          bigserial PRIMARY KEY,
    limit_id    bigint NOT NULL,
    holder      text NOT NULL,
    units       integer NOT NULL,
    acquired_at double precision NOT NULL,
    released_at double precision NOT NULL,
    lease_id    text NOT NULL
);
CREATE INDEX held_by_limit ON @schema@.held (limit_id, released_at);
