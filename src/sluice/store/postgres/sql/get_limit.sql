-- Step: get_limit — read one limit (one statement, no locks).
-- Parameters:
--   p_name        text      the limit's name
-- Returns: jsonb, the limit {name, slots, rate, burst, active, lease_ttl}.
-- Raises: SL404 (detail: JSON list with the name) if there is none.
CREATE OR REPLACE FUNCTION @schema@.get_limit(p_name text)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_limit @schema@.limits;
BEGIN
    SELECT * INTO v_limit FROM @schema@.limits WHERE name = p_name;
    IF NOT FOUND THEN
        PERFORM @schema@._not_found(p_name);
    END IF;
    RETURN @schema@._limit_json(v_limit);
END $$;
