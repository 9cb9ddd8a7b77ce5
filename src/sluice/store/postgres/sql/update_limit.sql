-- Step: update_limit — change a limit's numbers in place, keeping holders and waiters
-- (one transaction). The client reads the limit, applies and validates the
-- changes, and passes what it read: if the limit changed meanwhile the step
-- raises 40001 and the client starts over.
-- Parameters:
--   p_name        text      the limit
--   p_old         jsonb     the limit as the client read it
--   p_slots, p_rate, p_burst, p_lease_ttl   the new values
--   p_restart_bucket boolean  whether rate or burst changed (the bucket restarts full)
--   p_process_id  text      the calling process
-- Returns: jsonb {limit: the stored limit, wake: ticket ids of the caller's process}.
-- Raises: SL404 if absent; 40001 if it changed since the client read it.
-- Hand-offs: its waiters are served as the change allows; grants made here wait to be
--   claimed by asking, even those to the caller's own tickets.
-- Locks: the limit; the other limits of its waiters only with SKIP LOCKED.
CREATE OR REPLACE FUNCTION @schema@.update_limit(
    p_name text, p_old jsonb, p_slots integer, p_rate double precision, p_burst integer,
    p_lease_ttl double precision, p_restart_bucket boolean, p_process_id text
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_limit @schema@.limits;
    v_now double precision;
    s @schema@.step_state;
BEGIN
    SELECT * INTO v_limit FROM @schema@.limits WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM @schema@._not_found(p_name);
    END IF;
    IF @schema@._limit_json(v_limit) <> p_old THEN
        RAISE EXCEPTION 'limit % changed; try again', p_name USING ERRCODE = '40001';
    END IF;
    v_now := @schema@._now();
    UPDATE @schema@.limits
    SET slots = p_slots, rate = p_rate, burst = p_burst, lease_ttl = p_lease_ttl,
        tat = CASE WHEN p_restart_bucket THEN 0 ELSE tat END, updated_at = v_now
    WHERE id = v_limit.id
    RETURNING * INTO v_limit;
    -- Its head may now be served, or wait for another token.
    s := @schema@._state(p_process_id, NULL, ARRAY[v_limit.id], v_now);
    s.touched := ARRAY[v_limit.id];
    s.moved := ARRAY[v_limit.id];
    s := @schema@._hand_off(s);
    RETURN jsonb_build_object('limit', @schema@._limit_json(v_limit),
                              'wake', to_jsonb(@schema@._notify(s)));
END $$;
