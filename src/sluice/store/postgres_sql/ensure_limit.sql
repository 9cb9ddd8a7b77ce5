-- Step: ensure_limit — create a limit unless one has its name (one transaction).
-- Parameters:
--   p_name, p_slots, p_rate, p_burst, p_active, p_lease_ttl   the limit (validated by the client)
--   p_process_id  text      the calling process
-- Returns: jsonb {limit: the stored limit (the existing one, untouched, if any),
--   wake: ticket ids of the caller's process}.
-- Raises: 40001 if its waiters queued elsewhere while it waited (retried).
-- Locks: the limits its waiters wait on, in name order.
CREATE OR REPLACE FUNCTION @schema@.ensure_limit(
    p_name text, p_slots integer, p_rate double precision, p_burst integer,
    p_active boolean, p_lease_ttl double precision, p_process_id text
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_limit @schema@.limits;
    v_now double precision;
    v_locked bigint[] := '{}';
BEGIN
    IF p_active THEN
        v_locked := @schema@._lock_for_join(p_name, '{}');
    END IF;
    v_now := @schema@._now();
    INSERT INTO @schema@.limits (name, slots, rate, burst, active, lease_ttl, tat, created_at,
                                 updated_at)
    VALUES (p_name, p_slots, p_rate, p_burst, p_active, p_lease_ttl, 0, v_now, v_now)
    ON CONFLICT (name) DO NOTHING
    RETURNING * INTO v_limit;
    IF FOUND THEN
        IF p_active THEN
            PERFORM @schema@._join_waiters(v_limit.id, p_name, v_locked);
        END IF;
    ELSE
        SELECT * INTO v_limit FROM @schema@.limits WHERE name = p_name;
    END IF;
    RETURN jsonb_build_object('limit', @schema@._limit_json(v_limit), 'wake', '[]'::jsonb);
END $$;
