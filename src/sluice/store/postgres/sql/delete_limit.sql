-- Step: delete_limit — delete a limit (one transaction). Its waiters are withdrawn
-- and woken to look again: they get LimitNotFound, or (missing='ignore') queue
-- anew without it.
-- Parameters:
--   p_name        text      the limit
--   p_force       boolean   revoke its leases instead of refusing
--   p_process_id  text      the calling process
-- Returns: jsonb {wake: ticket ids of the caller's process, and the ids of its leases
--   revoked}. Each revoked lease's process is woken with the lease id (a notification
--   like a ticket's), so its holder learns at once.
-- Raises: SL404 if absent; SL423 (detail: JSON {name, holders}) if leases hold it and
--   not p_force; 40001 if what it covers changed while it waited (retried).
-- Locks: the limit, the other limits of its leases and of its waiters, in name order.
CREATE OR REPLACE FUNCTION @schema@.delete_limit(
    p_name text, p_force boolean, p_process_id text
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_locked bigint[] := @schema@._lock_around(p_name, true);
    v_id bigint := v_locked[1];
    s @schema@.step_state := @schema@._state(p_process_id, NULL, v_locked, @schema@._now());
    v_leases text[];
    v_lease record;
    v_ticket record;
BEGIN
    s := @schema@._reclaim(s, ARRAY[v_id]);
    v_leases := ARRAY(SELECT lease_id FROM @schema@.holdings WHERE limit_id = v_id);
    IF cardinality(v_leases) > 0 AND NOT p_force THEN
        RAISE EXCEPTION 'limit % has % holder(s)', p_name, cardinality(v_leases)
            USING ERRCODE = 'SL423',
                  DETAIL = jsonb_build_object('name', p_name, 'holders', cardinality(v_leases))::text;
    END IF;
    FOR v_lease IN SELECT id, process_id FROM @schema@.leases WHERE id = ANY(v_leases) LOOP
        s := @schema@._wake(s, v_lease.id, v_lease.process_id);
    END LOOP;
    s := @schema@._revoke(s, v_leases, false);
    FOR v_ticket IN
        SELECT t.id, t.process_id FROM @schema@.queue q JOIN @schema@.tickets t ON t.id = q.ticket_id
        WHERE q.limit_id = v_id ORDER BY q.seq
    LOOP
        s := @schema@._wake(s, v_ticket.id, v_ticket.process_id);
        s := @schema@._drop(s, v_ticket.id);
    END LOOP;
    DELETE FROM @schema@.limits WHERE id = v_id;
    s.touched := ARRAY(SELECT unnest(s.touched) EXCEPT SELECT v_id);
    s.moved := ARRAY(SELECT unnest(s.moved) EXCEPT SELECT v_id);
    s := @schema@._hand_off(s);
    RETURN jsonb_build_object('wake', to_jsonb(@schema@._notify(s)));
END $$;
