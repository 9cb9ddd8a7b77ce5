-- Migration 6: the audit record of admin actions, in schema @schema@.
-- Parameters: none (@schema@ is replaced by the quoted schema name before running).
-- Returns: nothing. Run once, inside the migration transaction that holds the
-- schema's advisory lock, after migration 5; the step functions (admin.sql) are
-- (re)installed after the last migration.
--
-- admin   one row per admin action (update, enable, disable, reset, delete), written
--         by admin_record in the same statement, so the same transaction, as the
--         action's step; kept by limit name (a deleted limit's records stay), the
--         newest 1,000 per name (sluice.store.audit.ADMIN_KEEP). Actions before the
--         upgrade were not recorded.

CREATE TABLE @schema@.admin (
    id          bigserial PRIMARY KEY,
    limit_name  text NOT NULL,
    action      text NOT NULL,
    at          double precision NOT NULL,
    who         jsonb NOT NULL,
    changes     jsonb NOT NULL
);
CREATE INDEX admin_by_limit ON @schema@.admin (limit_name, id);
