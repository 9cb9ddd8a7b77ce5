-- Step: set_active — enable or disable a limit (one transaction). An inactive limit
-- admits everyone and records nothing; waiters naming a limit that is enabled
-- join its queue.
-- Parameters:
--   p_name        text      the limit
--   p_active      boolean   the new state
--   p_process_id  text      the calling process
-- Returns: jsonb {limit: the stored limit, wake: ticket ids of the caller's process}.
-- Raises: SL404 if absent; 40001 if its waiters queued elsewhere while it waited (retried).
-- Locks: enabling, the limit and the limits its waiters wait on, in name order.
-- Hand-offs: grants made here wait to be claimed by asking, even the caller's own.
CREATE OR REPLACE FUNCTION @schema@.set_active(
    p_name text, p_active boolean, p_process_id text
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_limit @schema@.limits;
    v_was boolean;
    v_now double precision;
    v_locked bigint[];
    s @schema@.step_state;
BEGIN
    IF p_active THEN
        v_locked := @schema@._lock_for_join(
            p_name, ARRAY(SELECT id FROM @schema@.limits WHERE name = p_name));
    END IF;
    SELECT * INTO v_limit FROM @schema@.limits WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM @schema@._not_found(p_name);
    END IF;
    v_was := v_limit.active;
    v_now := @schema@._now();
    UPDATE @schema@.limits SET active = p_active, updated_at = v_now WHERE id = v_limit.id
    RETURNING * INTO v_limit;
    IF p_active AND NOT v_was THEN
        PERFORM @schema@._join_waiters(v_limit.id, v_limit.name, v_locked);
    END IF;
    s := @schema@._state(p_process_id, NULL, coalesce(v_locked, '{}') || v_limit.id, v_now);
    s.touched := ARRAY[v_limit.id];
    s.moved := ARRAY[v_limit.id];
    s := @schema@._hand_off(s);
    RETURN jsonb_build_object('limit', @schema@._limit_json(v_limit),
                              'wake', to_jsonb(@schema@._notify(s)));
END $$;
