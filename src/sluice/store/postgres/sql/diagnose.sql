-- Step: diagnose — read-only health facts for `sluice doctor` (one statement).
-- Parameters: none.
-- Returns: jsonb {schema_version, expired_leases: leases past their expiry not yet
--   reclaimed, now}.
CREATE OR REPLACE FUNCTION @schema@.diagnose()
RETURNS jsonb LANGUAGE sql VOLATILE AS $$
    SELECT jsonb_build_object(
        'schema_version', (SELECT value::integer FROM @schema@.meta WHERE key = 'schema_version'),
        'expired_leases', (SELECT count(*) FROM @schema@.leases
                           WHERE expires_at <= @schema@._now()),
        'now', @schema@._now())
$$;
