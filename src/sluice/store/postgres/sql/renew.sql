-- Step: renew — extend a process's leases and tickets by their TTL (one transaction).
-- Parameters:
--   p_lease_ids   text[]    leases the process holds
--   p_ticket_ids  text[]    tickets it waits with
--   p_process_id  text      the calling process
-- Returns: jsonb {lost_leases: [...], lost_tickets: [...], expires_at: {lease id: time},
--   wake: ticket ids of the caller's process}. Gone or expired is lost, and final:
--   an expired lease or ticket is reclaimed here and its units handed on. A renewed
--   ticket that was stalled (a grant handed to it lapsed unclaimed) is no longer
--   passed by: its process shows life (it is served at the next hand-off or ask).
--   Hand-offs made here are claimed by asking, as any hand-off outside an exchange,
--   even to the caller's own tickets.
-- Locks: the limits of the expired leases and tickets among them and the queues of
--   the stalled tickets, in name order; others only with SKIP LOCKED.
CREATE OR REPLACE FUNCTION @schema@.renew(
    p_lease_ids text[], p_ticket_ids text[], p_process_id text
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_now double precision := @schema@._now();
    s @schema@.step_state;
    v_expires jsonb;
    v_renewed text[];
    v_lost_leases text[];
    v_lost_tickets text[];
    v_item record;
    v_try bigint[];
    v_ids bigint[];
BEGIN
    -- Lock first (one batch, name order) the limits that reclaiming and unstalling change.
    v_ids := ARRAY(
        SELECT unnest(limit_ids) FROM @schema@.leases
        WHERE id = ANY(p_lease_ids) AND expires_at <= v_now
        UNION
        SELECT q.limit_id FROM @schema@.tickets t JOIN @schema@.queue q ON q.ticket_id = t.id
        WHERE t.id = ANY(p_ticket_ids) AND (t.expires_at <= v_now OR q.stalled));
    IF cardinality(v_ids) > 0 THEN
        s := @schema@._state(p_process_id, NULL, @schema@._lock(v_ids), @schema@._now());
    ELSE
        s := @schema@._state(p_process_id, NULL, '{}', v_now);
    END IF;
    WITH renewed AS (
        UPDATE @schema@.leases SET expires_at = s.now + lease_ttl
        WHERE id = ANY(p_lease_ids) AND expires_at > s.now
        RETURNING id, expires_at
    )
    SELECT coalesce(jsonb_object_agg(id, expires_at), '{}'), coalesce(array_agg(id), '{}')
    INTO v_expires, v_renewed FROM renewed;
    v_lost_leases := ARRAY(SELECT unnest(p_lease_ids) EXCEPT SELECT unnest(v_renewed));
    FOR v_item IN
        SELECT id, limit_ids FROM @schema@.leases WHERE id = ANY(v_lost_leases)
    LOOP
        v_try := @schema@._try_lock(s.locked, v_item.limit_ids);
        CONTINUE WHEN v_try IS NULL;  -- expired all the same: whoever waits reclaims it
        s.locked := v_try;
        s := @schema@._revoke(s, ARRAY[v_item.id], true);
    END LOOP;
    WITH renewed AS (
        UPDATE @schema@.tickets SET expires_at = s.now + lease_ttl
        WHERE id = ANY(p_ticket_ids) AND expires_at > s.now
        RETURNING id
    ), unstalled AS (
        UPDATE @schema@.queue SET stalled = false
        WHERE ticket_id IN (SELECT id FROM renewed) AND stalled AND limit_id = ANY(s.locked)
    )
    SELECT ARRAY(SELECT unnest(p_ticket_ids) EXCEPT SELECT id FROM renewed)
    INTO v_lost_tickets;
    FOR v_item IN
        SELECT id FROM @schema@.tickets WHERE id = ANY(v_lost_tickets)
    LOOP
        v_try := @schema@._try_lock(s.locked, ARRAY(
            SELECT limit_id FROM @schema@.queue WHERE ticket_id = v_item.id));
        CONTINUE WHEN v_try IS NULL;
        s.locked := v_try;
        s := @schema@._drop(s, v_item.id, true);
    END LOOP;
    -- Leases that hold no units are found by no waiter: sweep those long expired
    -- (uncollected rate grants of a process that died meanwhile).
    DELETE FROM @schema@.leases WHERE cardinality(limit_ids) = 0 AND expires_at < s.now - 60;
    -- The record of who held what keeps its newest 1,000,000 rows.
    DELETE FROM @schema@.held WHERE id <= (SELECT max(id) FROM @schema@.held) - 1000000;
    s := @schema@._hand_off(s);
    RETURN jsonb_build_object(
        'lost_leases', to_jsonb(v_lost_leases), 'lost_tickets', to_jsonb(v_lost_tickets),
        'expires_at', v_expires, 'wake', to_jsonb(@schema@._notify(s)));
END $$;
