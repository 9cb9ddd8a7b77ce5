-- Migration 4: indexes and helpers for generic plans, in schema @schema@.
-- Parameters: none (@schema@ is replaced by the quoted schema name before running).
-- Returns: nothing. Run once, inside the migration transaction that holds the
-- schema's advisory lock, after migration 3; the step functions are (re)installed
-- after the last migration. Limits, leases, holdings and waiters stay as they are.
--
-- The exchange step plans its statements once per session (generic plans, see
-- exchange.sql): a plan cannot use a partial index whose condition it cannot
-- prove from the statement's own text, whatever the parameters turn out to be.
--   leases_by_ticket  now on every lease (it skipped those of no ticket, the few
--                     leases schema 2 left): the unclaimed grants of a ticket are
--                     found by it, however many leases there are
--   _valid            also answers the names that are missing (its result type
--                     changed)
--   _grant            also takes p_last (a ticket served to the end leaves its queues
--                     in the grant's own statement)
-- The old _valid and _grant go; the new ones are installed after this script (left
-- in place, the old _valid would stop that, the old _grant make its calls ambiguous).

DROP INDEX @schema@.leases_by_ticket;
CREATE INDEX leases_by_ticket ON @schema@.leases (ticket_id);

DROP FUNCTION IF EXISTS @schema@._valid(@schema@.step_state, jsonb);
DROP FUNCTION IF EXISTS @schema@._grant(
    text, bigint, text, text, text, integer, integer, text, @schema@.limit_row[], text[],
    boolean, bigint, double precision, double precision);
