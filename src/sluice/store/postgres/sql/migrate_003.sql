-- Migration 3: the exchange protocol (sluice.store.base.Exchange), in schema @schema@.
-- Parameters: none (@schema@ is replaced by the quoted schema name before running).
-- Returns: nothing. Run once, inside the migration transaction that holds the
-- schema's advisory lock, after migration 2; the step functions are (re)installed
-- after the last migration. Limits, leases, holdings and waiters stay as they are:
-- every existing ticket wants one grant and every existing lease is claimed.
--
-- What it adds:
--   tickets.wanted       grants the ticket still waits for (a ticket stands for many
--                        identical requests of one process)
--   tickets.arrival_at,  when those wanted grants arrived, oldest first, as parallel
--   tickets.arrival_n    arrays of times and counts (empty: all `wanted` at created_at),
--                        so each grant's wait is counted from its own arrival
--   tickets.step         the caller's exchange that last changed the ticket (its
--                        number in its process: a resent exchange finds its own work)
--   queue.stalled        a grant handed to the ticket lapsed unclaimed: hand-offs and
--                        "who heads this queue" pass it by until its process asks
--                        (or renews it); it keeps its place and counts in positions
--   leases.ticket_id,    the ticket a grant went to and its place in line (a lapsed
--   leases.ticket_seq    grant gives itself back to that ticket, or opens it again there)
--   leases.claimed       false: handed to a ticket by another process's step, expiring
--                        CLAIM_WINDOW after the hand-off unless its process asks first
--   leases.step          the caller's exchange that made the lease its own (granted to
--                        it, or claimed by its ask): what a resent exchange reports
--   fence                the store-wide count of grants: a lease is named
--                        <ticket or request id>.<fence>, a number that only grows
--   step_state           what a step carries from helper to helper (engine.sql)
-- (ADD COLUMN with a constant default rewrites no rows.)

ALTER TABLE @schema@.tickets
    ADD COLUMN wanted     integer NOT NULL DEFAULT 1,
    ADD COLUMN arrival_at double precision[] NOT NULL DEFAULT '{}',
    ADD COLUMN arrival_n  integer[] NOT NULL DEFAULT '{}',
    ADD COLUMN step       bigint;

ALTER TABLE @schema@.queue
    ADD COLUMN stalled boolean NOT NULL DEFAULT false;

ALTER TABLE @schema@.leases
    ADD COLUMN ticket_id  text NOT NULL DEFAULT '',
    ADD COLUMN ticket_seq bigint,
    ADD COLUMN claimed    boolean NOT NULL DEFAULT true,
    ADD COLUMN step       bigint;
CREATE INDEX leases_by_ticket ON @schema@.leases (ticket_id) WHERE ticket_id <> '';

CREATE SEQUENCE @schema@.fence;

CREATE TYPE @schema@.step_state AS (
    me          text,               -- the process running the step (its wake-ups come back)
    caller      text,               -- in an exchange, the same: grants to its tickets are
                                    -- claimed at once; NULL in every other step
    host        text,
    pid         integer,
    step        bigint,             -- the exchange's number in its process
    resend      boolean,            -- the exchange may have committed already
    stamped     text[],             -- (resend) the caller's tickets that attempt changed,
    resent      jsonb,              -- and the grants it made the caller's (a JSON array)
    now         double precision,
    locked      bigint[],           -- limits whose rows the step holds
    touched     bigint[],           -- limits whose units or queue changed (hand-off runs on them)
    moved       bigint[],           -- limits whose queue head may have changed
    wake_t      text[],             -- tickets to wake, and
    wake_p      text[],             -- the process of each
    mine        jsonb,              -- grants to the caller, in order (a JSON array)
    waiting     jsonb,              -- caller's ticket id -> the request id naming its missing
    released    jsonb,
    refused     jsonb,
    joined      jsonb,
    missing     jsonb
);

-- Every function versions 1 and 2 defined goes, whatever its parameters: the
-- step functions and their helpers are installed again after this script, and
-- those that are gone (acquire, release, abandon, _take, _collect, _queue,
-- _impossible) or whose parameters or results changed must not stay behind as
-- stale overloads.
DO $$
DECLARE
    v_fn regprocedure;
BEGIN
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = '@schema@'::regnamespace AND p.prokind = 'f'
          AND p.proname = ANY(ARRAY[
              '_now', '_lock', '_lock_names', '_try_lock', '_rows', '_active', '_ids',
              '_max_occupy', '_impossible', '_blockers', '_any', '_wait_bucket', '_granted',
              '_revoke', '_drop_ticket', '_take', '_collect', '_retry_in', '_queue',
              '_reclaim', '_lock_for_join', '_join_waiters', '_hand_off', '_limit_json',
              '_not_found', '_lock_around', '_around', 'acquire', 'release', 'renew',
              'abandon', 'define_limit', 'get_limit', 'list_limits', 'update_limit',
              'set_active', 'reset_limit', 'delete_limit', 'inspect_limit', 'forget_process',
              'diagnose'])
    LOOP
        EXECUTE 'DROP FUNCTION ' || v_fn::text;
    END LOOP;
END $$;
