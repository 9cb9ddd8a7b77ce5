-- Step: reset_limit — revoke every lease holding a limit and refill its bucket
-- (one transaction), grants handed over and not yet claimed included; the freed
-- units go to its waiters (to be claimed by asking, as any hand-off outside an
-- exchange).
-- Parameters:
--   p_name        text      the limit
--   p_process_id  text      the calling process
-- Returns: jsonb {revoked: how many leases, wake: ticket ids of the caller's process,
--   and the ids of its leases revoked}. Each revoked lease's process is woken with
--   the lease id (a notification like a ticket's), so its holder learns at once.
-- Raises: SL404 if absent; 40001 if its holders changed while it waited (retried).
-- Locks: the limit and the other limits its leases hold, in name order.
CREATE OR REPLACE FUNCTION @schema@.reset_limit(p_name text, p_process_id text)
RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_locked bigint[] := @schema@._lock_around(p_name, false);
    v_id bigint := v_locked[1];
    s @schema@.step_state := @schema@._state(p_process_id, NULL, v_locked, @schema@._now());
    v_leases text[];
    v_lease record;
BEGIN
    v_leases := ARRAY(SELECT lease_id FROM @schema@.holdings WHERE limit_id = v_id);
    FOR v_lease IN SELECT id, process_id FROM @schema@.leases WHERE id = ANY(v_leases) LOOP
        s := @schema@._wake(s, v_lease.id, v_lease.process_id);
    END LOOP;
    s := @schema@._revoke(s, v_leases, false);
    UPDATE @schema@.limits SET tat = 0, updated_at = s.now WHERE id = v_id;
    s.touched := s.touched || v_id;
    s.moved := s.moved || v_id;
    s := @schema@._hand_off(s);
    RETURN jsonb_build_object('revoked', cardinality(v_leases),
                              'wake', to_jsonb(@schema@._notify(s)));
END $$;
