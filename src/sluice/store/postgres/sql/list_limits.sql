-- Step: list_limits — read every limit (one statement, no locks).
-- Parameters: none.
-- Returns: jsonb, a list of limits {name, slots, rate, burst, active, lease_ttl}, by name.
CREATE OR REPLACE FUNCTION @schema@.list_limits()
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(@schema@._limit_json(l) ORDER BY l.name), '[]')
    FROM @schema@.limits l
$$;
