-- Step: delete_limit — delete a limit (one transaction). Its waiters are withdrawn
-- and woken to look again: they get LimitNotFound, or (missing='ignore') queue
-- anew without it.
-- Parameters:
--   p_name        text      the limit
--   p_force       boolean   revoke its leases instead of refusing
--   p_process_id  text      the calling process
-- Returns: jsonb {wake: ticket ids of the caller's process}.
-- Raises: SL404 if absent; SL423 (detail: JSON {name, holders}) if leases hold it and
--   not p_force; 40001 if what it covers changed while it waited (retried).
-- Locks: the limit, the other limits of its leases and of its waiters, in name order.
CREATE OR REPLACE FUNCTION @schema@.delete_limit(
    p_name text, p_force boolean, p_process_id text
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_locked bigint[] := @schema@._lock_around(p_name, true);
    v_id bigint := v_locked[1];
    v_now double precision := @schema@._now();
    v_reclaim record;
    v_leases text[];
    v_touched bigint[] := '{}';
    v_moved bigint[] := '{}';
    v_wake_t text[] := '{}';
    v_wake_p text[] := '{}';
    v_ticket record;
    v_ids bigint[];
BEGIN
    SELECT * INTO v_reclaim FROM @schema@._reclaim(ARRAY[v_id], v_locked, v_now);
    v_touched := v_reclaim.touched;
    v_moved := v_reclaim.moved;
    v_locked := v_reclaim.locked;
    v_leases := ARRAY(SELECT lease_id FROM @schema@.holdings WHERE limit_id = v_id);
    IF cardinality(v_leases) > 0 AND NOT p_force THEN
        RAISE EXCEPTION 'limit % has % holder(s)', p_name, cardinality(v_leases)
            USING ERRCODE = 'SL423',
                  DETAIL = jsonb_build_object('name', p_name, 'holders', cardinality(v_leases))::text;
    END IF;
    v_touched := v_touched || @schema@._revoke(v_leases);
    FOR v_ticket IN
        SELECT t.id, t.process_id FROM @schema@.queue q JOIN @schema@.tickets t ON t.id = q.ticket_id
        WHERE q.limit_id = v_id ORDER BY q.seq
    LOOP
        v_wake_t := v_wake_t || v_ticket.id;
        v_wake_p := v_wake_p || v_ticket.process_id;
        v_ids := @schema@._drop_ticket(v_ticket.id);
        IF v_ids IS NOT NULL THEN
            v_touched := v_touched || v_ids;
            v_moved := v_moved || v_ids;
        END IF;
    END LOOP;
    DELETE FROM @schema@.limits WHERE id = v_id;
    v_touched := ARRAY(SELECT unnest(v_touched) EXCEPT SELECT v_id);
    v_moved := ARRAY(SELECT unnest(v_moved) EXCEPT SELECT v_id);
    RETURN jsonb_build_object('wake', to_jsonb(@schema@._hand_off(
        v_touched, v_moved, v_locked, v_wake_t, v_wake_p, p_process_id, v_now)));
END $$;
