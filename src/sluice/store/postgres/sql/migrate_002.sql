-- Migration 2: limit totals (LimitTotals), in schema @schema@.
-- Parameters: none (@schema@ is replaced by the quoted schema name before running).
-- Returns: nothing. Run once, inside the migration transaction that holds the
-- schema's advisory lock, after migration 1; the step functions are (re)installed
-- after the last migration. Limits, leases, holdings and waiters stay as they are;
-- every limit's totals start at zero.
--
-- Each limit counts in its own row, for every process, inside the steps that
-- cause it (one UPDATE of a row the step has locked anyway):
--   grants, granted_units  grants on it while active, and their units: acquire.sql's
--                          fast path, engine.sql's _take (a grant at once, or to a
--                          request that had queued) and _hand_off's fast path (a
--                          grant handed to a waiter: counted then, not when collected)
--   queued_waits           of those, the grants that had queued, per wait bucket
--                          (sluice.limits.model.WAIT_BUCKETS, then the overflow: 13,
--                          1-based here; _wait_bucket); the wait runs from the
--                          ticket's created_at to the grant. Grants at once (waited
--                          0) are grants - sum(queued_waits).
--   wait_seconds           the waits of those queued grants, summed
--   timeouts               acquisitions that gave up (AcquireTimeout) queued behind
--                          it: abandon.sql's p_timed_out_on
--   reclaimed              leases holding its units that were taken back because they
--                          expired: engine.sql's _revoke when given p_expired_at
--                          (_reclaim, renew.sql, acquire.sql's lapsed hand-off), and
--                          release.sql for a lease released after it expired
-- They go with the limit's row: a limit created again starts from zero.
-- (ADD COLUMN with a constant default rewrites no rows.)

ALTER TABLE @schema@.limits
    ADD COLUMN grants        bigint NOT NULL DEFAULT 0,
    ADD COLUMN granted_units bigint NOT NULL DEFAULT 0,
    ADD COLUMN timeouts      bigint NOT NULL DEFAULT 0,
    ADD COLUMN reclaimed     bigint NOT NULL DEFAULT 0,
    ADD COLUMN queued_waits  bigint[] NOT NULL DEFAULT '{0,0,0,0,0,0,0,0,0,0,0,0,0}',
    ADD COLUMN wait_seconds  double precision NOT NULL DEFAULT 0;

-- Functions whose parameters changed: the new ones are installed after this
-- script. abandon gained p_timed_out_on (DEFAULT NULL, so a process still on
-- schema 1's code calling abandon(text, text) reaches the new one); _take
-- gained p_queued_since. Left in place, the old ones would be stale overloads,
-- or make those calls ambiguous.
DROP FUNCTION IF EXISTS @schema@.abandon(text, text);
DROP FUNCTION IF EXISTS @schema@._take(
    text, text, text, text, integer, integer, text, @schema@.limit_row[], text[], boolean,
    double precision);
