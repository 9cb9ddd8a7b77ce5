-- Step: define_limit — create a limit with a full rate bucket; with p_ensure, leave an
-- existing one as it is (one transaction).
-- Parameters:
--   p_name, p_slots, p_rate, p_burst, p_active, p_lease_ttl   the limit (validated by the client)
--   p_process_id  text      the calling process
--   p_ensure      boolean   true: a limit with this name already is the answer, untouched
-- Returns: jsonb {limit: the stored limit, wake: ticket ids of the caller's process}.
--   Waiters that named it while it was missing join its queue (and are served if they
--   can be: hand-offs outside an exchange are claimed by asking).
-- Raises: SL409 (detail: the name) if a limit has this name and not p_ensure; 40001 if its
--   waiters queued elsewhere while it waited (retried).
-- Locks: the limits its waiters wait on, in name order.
CREATE OR REPLACE FUNCTION @schema@.define_limit(
    p_name text, p_slots integer, p_rate double precision, p_burst integer,
    p_active boolean, p_lease_ttl double precision, p_process_id text, p_ensure boolean
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_limit @schema@.limits;
    v_now double precision;
    v_locked bigint[] := '{}';
    s @schema@.step_state;
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
        IF p_active AND @schema@._join_waiters(v_limit.id, p_name, v_locked) THEN
            s := @schema@._state(p_process_id, NULL, v_locked || v_limit.id, v_now);
            s.moved := ARRAY[v_limit.id];
            s := @schema@._hand_off(s);
            RETURN jsonb_build_object('limit', @schema@._limit_json(v_limit),
                                      'wake', to_jsonb(@schema@._notify(s)));
        END IF;
    ELSIF p_ensure THEN
        SELECT * INTO v_limit FROM @schema@.limits WHERE name = p_name;
    ELSE
        RAISE EXCEPTION 'limit % already exists', p_name USING ERRCODE = 'SL409', DETAIL = p_name;
    END IF;
    RETURN jsonb_build_object('limit', @schema@._limit_json(v_limit), 'wake', '[]'::jsonb);
END $$;
