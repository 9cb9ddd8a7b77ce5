-- Step: reset_limit — revoke every lease holding a limit and refill its bucket
-- (one transaction); the freed units go to its waiters.
-- Parameters:
--   p_name        text      the limit
--   p_process_id  text      the calling process
-- Returns: jsonb {revoked: how many leases, wake: ticket ids of the caller's process}.
-- Raises: SL404 if absent; 40001 if its holders changed while it waited (retried).
-- Locks: the limit and the other limits its leases hold, in name order.
CREATE OR REPLACE FUNCTION @schema@.reset_limit(p_name text, p_process_id text)
RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_locked bigint[] := @schema@._lock_around(p_name, false);
    v_id bigint := v_locked[1];
    v_now double precision := @schema@._now();
    v_leases text[];
    v_touched bigint[];
BEGIN
    v_leases := ARRAY(SELECT lease_id FROM @schema@.holdings WHERE limit_id = v_id);
    v_touched := @schema@._revoke(v_leases) || v_id;
    UPDATE @schema@.limits SET tat = 0, updated_at = v_now WHERE id = v_id;
    RETURN jsonb_build_object(
        'revoked', cardinality(v_leases),
        'wake', to_jsonb(@schema@._hand_off(v_touched, ARRAY[v_id], v_locked, NULL, NULL,
                                            p_process_id, v_now)));
END $$;
