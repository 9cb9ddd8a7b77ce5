-- Migration 1: the tables of the Sluice PostgreSQL store, in schema @schema@.
-- Parameters: none (@schema@ is replaced by the quoted schema name before running).
-- Returns: nothing. Run once, inside the migration transaction that holds the
-- schema's advisory lock (see plans.migration_sql); the step
-- functions are (re)installed after the last migration.
--
-- A limit's units in use are its holdings rows; limits.in_use caches their sum,
-- changed only in the same statement group that inserts or deletes holdings
-- (engine.sql: _take, _revoke, release), under the limit's row lock. (Summing
-- holdings on every step would scan index entries of deleted rows that
-- PostgreSQL has not vacuumed yet: a busy limit leaves thousands a minute.)
-- Times are seconds since the epoch on the database clock (clock_timestamp()).

CREATE TABLE IF NOT EXISTS @schema@.meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- One row per limit; tat is the GCRA theoretical arrival time (0 = full bucket).
-- Every step locks the rows of the limits it works on (FOR UPDATE, in name
-- order), which serialises all changes to one limit's holdings and queue.
CREATE TABLE @schema@.limits (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    slots       integer,
    rate        double precision,
    burst       integer,
    active      boolean NOT NULL DEFAULT true,
    lease_ttl   double precision NOT NULL,
    tat         double precision NOT NULL DEFAULT 0,
    in_use      bigint NOT NULL DEFAULT 0,
    created_at  double precision NOT NULL,
    updated_at  double precision NOT NULL
);

-- limit_ids: the limits the lease holds units of; names: every active limit it
-- was granted on. A 'rate' row is a grant of rate units handed to a waiter
-- that has not collected it yet (nothing to release).
CREATE TABLE @schema@.leases (
    id          text PRIMARY KEY,
    limit_ids   bigint[] NOT NULL,
    names       text[] NOT NULL,
    kind        text NOT NULL,
    process_id  text NOT NULL,
    holder      text NOT NULL,
    host        text NOT NULL,
    pid         integer NOT NULL,
    occupy      integer NOT NULL,
    lease_ttl   double precision NOT NULL,
    acquired_at double precision NOT NULL,
    expires_at  double precision NOT NULL
);
-- Leases that hold no units (uncollected rate grants, grants on rate-only
-- limits) are not found through holdings: renewals sweep the stale ones.
CREATE INDEX leases_unheld_by_expiry ON @schema@.leases (expires_at)
    WHERE cardinality(limit_ids) = 0;

-- The units a lease took on each limit with slots it named.
CREATE TABLE @schema@.holdings (
    limit_id    bigint NOT NULL,
    lease_id    text NOT NULL,
    units       integer NOT NULL,
    PRIMARY KEY (limit_id, lease_id)
);

-- Waiting requests; seq is the store-wide arrival order (never reused).
CREATE SEQUENCE @schema@.ticket_seq;
CREATE TABLE @schema@.tickets (
    seq         bigint PRIMARY KEY,
    id          text NOT NULL UNIQUE,
    process_id  text NOT NULL,
    holder      text NOT NULL,
    host        text NOT NULL,
    pid         integer NOT NULL,
    occupy      integer NOT NULL,
    kind        text NOT NULL,
    names       text[] NOT NULL,     -- every limit name asked for
    limit_count integer NOT NULL,    -- how many queues it is in
    lease_ttl   double precision NOT NULL,
    created_at  double precision NOT NULL,
    expires_at  double precision NOT NULL
);

-- One row per (limit, waiting ticket): the per-limit FIFO queues.
CREATE TABLE @schema@.queue (
    limit_id    bigint NOT NULL,
    seq         bigint NOT NULL,
    ticket_id   text NOT NULL,
    occupy      integer NOT NULL,
    kind        text NOT NULL,
    PRIMARY KEY (limit_id, seq)
);
CREATE INDEX queue_by_ticket ON @schema@.queue (ticket_id);

-- A limit as the engine functions pass it around: its row, plus the seq of its
-- queue head and the units in use, read after its row was locked.
CREATE TYPE @schema@.limit_row AS (
    id          bigint,
    name        text,
    slots       integer,
    rate        double precision,
    burst       integer,
    active      boolean,
    lease_ttl   double precision,
    tat         double precision,
    head_seq    bigint,
    in_use      bigint
);
