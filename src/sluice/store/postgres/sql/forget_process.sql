-- Step: forget_process — on a normal exit, give back every lease and queue place
-- of one process at once (one transaction), handing the units on.
-- Parameters:
--   p_process_id  text      the exiting process
-- Returns: jsonb {leases: how many were released, tickets: how many withdrawn}.
-- Raises: 40001 if what it covers grew while it waited for its locks (retried).
-- Locks: the limits of its leases and tickets, in name order.
CREATE OR REPLACE FUNCTION @schema@.forget_process(p_process_id text)
RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_leases text[];
    v_tickets text[];
    v_want bigint[];
    v_locked bigint[];
    v_now double precision;
    v_ids bigint[];
    v_touched bigint[] := '{}';
    v_moved bigint[] := '{}';
    v_ticket text;
BEGIN
    v_want := ARRAY(
        SELECT unnest(limit_ids) FROM @schema@.leases WHERE process_id = p_process_id
        UNION
        SELECT q.limit_id FROM @schema@.tickets t JOIN @schema@.queue q ON q.ticket_id = t.id
        WHERE t.process_id = p_process_id);
    v_locked := @schema@._lock(v_want);
    v_now := @schema@._now();
    v_leases := ARRAY(SELECT id FROM @schema@.leases WHERE process_id = p_process_id);
    v_tickets := ARRAY(SELECT id FROM @schema@.tickets WHERE process_id = p_process_id);
    v_want := ARRAY(
        SELECT unnest(limit_ids) FROM @schema@.leases WHERE id = ANY(v_leases)
        UNION SELECT limit_id FROM @schema@.queue WHERE ticket_id = ANY(v_tickets));
    v_locked := @schema@._try_lock(v_locked, v_want);
    IF v_locked IS NULL THEN
        RAISE EXCEPTION 'process holdings changed; try again' USING ERRCODE = '40001';
    END IF;
    v_touched := @schema@._revoke(v_leases);
    FOREACH v_ticket IN ARRAY v_tickets LOOP
        v_ids := @schema@._drop_ticket(v_ticket);
        IF v_ids IS NOT NULL THEN
            v_touched := v_touched || v_ids;
            v_moved := v_moved || v_ids;
        END IF;
    END LOOP;
    IF cardinality(v_touched) > 0 THEN
        PERFORM @schema@._hand_off(v_touched, v_moved, v_locked, NULL, NULL, p_process_id, v_now);
    END IF;
    RETURN jsonb_build_object('leases', cardinality(v_leases), 'tickets', cardinality(v_tickets));
END $$;
