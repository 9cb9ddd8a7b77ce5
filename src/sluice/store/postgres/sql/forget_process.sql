-- Step: forget_process — on a normal exit, give back every lease and queue place
-- of one process at once (one transaction), handing the units on.
-- Parameters:
--   p_process_id  text      the exiting process
-- Returns: jsonb {leases: how many were released, tickets: how many withdrawn}.
--   Nothing counts as reclaimed, and its unclaimed grants lapse into nothing.
-- Raises: 40001 if what it covers grew while it waited for its locks (retried).
-- Locks: the limits of its leases and tickets, in name order.
CREATE OR REPLACE FUNCTION @schema@.forget_process(p_process_id text)
RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    s @schema@.step_state;
    v_leases text[];
    v_tickets text[];
    v_want bigint[];
    v_ticket text;
BEGIN
    v_want := ARRAY(
        SELECT unnest(limit_ids) FROM @schema@.leases WHERE process_id = p_process_id
        UNION
        SELECT q.limit_id FROM @schema@.tickets t JOIN @schema@.queue q ON q.ticket_id = t.id
        WHERE t.process_id = p_process_id);
    s := @schema@._state(p_process_id, NULL, @schema@._lock(v_want), @schema@._now());
    v_leases := ARRAY(SELECT id FROM @schema@.leases WHERE process_id = p_process_id);
    v_tickets := ARRAY(SELECT id FROM @schema@.tickets WHERE process_id = p_process_id);
    v_want := ARRAY(
        SELECT unnest(limit_ids) FROM @schema@.leases WHERE id = ANY(v_leases)
        UNION SELECT limit_id FROM @schema@.queue WHERE ticket_id = ANY(v_tickets));
    s.locked := @schema@._try_lock(s.locked, v_want);
    IF s.locked IS NULL THEN
        RAISE EXCEPTION 'process holdings changed; try again' USING ERRCODE = '40001';
    END IF;
    s := @schema@._revoke(s, v_leases, false);
    FOREACH v_ticket IN ARRAY v_tickets LOOP
        s := @schema@._drop(s, v_ticket);
    END LOOP;
    s := @schema@._hand_off(s);
    PERFORM @schema@._notify(s);
    RETURN jsonb_build_object('leases', cardinality(v_leases), 'tickets', cardinality(v_tickets));
END $$;
