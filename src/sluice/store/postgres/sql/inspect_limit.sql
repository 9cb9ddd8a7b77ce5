-- Step: inspect_limit — a limit with its live holders and waiters (one transaction;
-- expired leases and tickets in it are reclaimed first, and their units handed on).
-- Parameters:
--   p_name        text      the limit
--   p_process_id  text      the calling process
-- Returns: jsonb {limit, holders: [{lease_id, units, holder, host, pid, since,
--   expires_at}] by grant time (grants handed over and not yet claimed too),
--   waiters: [{ticket_id, occupy, holder, host, pid, since, wanted}] in queue order
--   (stalled tickets too: they keep their place), totals: {grants, granted_units, timeouts, reclaimed,
--   queued_waits: grants that had queued per wait bucket, wait_seconds} (see
--   migrate_002.sql), tat, now, wake: ticket ids of the caller's process}.
-- Raises: SL404 if absent.
-- Locks: the limit; the other limits of what expired only with SKIP LOCKED.
CREATE OR REPLACE FUNCTION @schema@.inspect_limit(p_name text, p_process_id text)
RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_locked bigint[] := @schema@._lock_names(ARRAY[p_name]);
    s @schema@.step_state := @schema@._state(p_process_id, NULL, v_locked, @schema@._now());
    v_limit @schema@.limits;
BEGIN
    IF cardinality(v_locked) = 0 THEN
        PERFORM @schema@._not_found(p_name);
    END IF;
    s := @schema@._hand_off(@schema@._reclaim(s, v_locked));
    SELECT * INTO v_limit FROM @schema@.limits WHERE id = v_locked[1];
    RETURN jsonb_build_object(
        'limit', @schema@._limit_json(v_limit),
        'holders', (
            SELECT coalesce(jsonb_agg(jsonb_build_object(
                'lease_id', l.id, 'units', h.units, 'holder', l.holder, 'host', l.host,
                'pid', l.pid, 'since', l.acquired_at, 'expires_at', l.expires_at)
                ORDER BY l.acquired_at, l.id), '[]')
            FROM @schema@.holdings h JOIN @schema@.leases l ON l.id = h.lease_id
            WHERE h.limit_id = v_limit.id),
        'waiters', (
            SELECT coalesce(jsonb_agg(jsonb_build_object(
                'ticket_id', t.id, 'occupy', q.occupy, 'holder', t.holder, 'host', t.host,
                'pid', t.pid, 'since', t.created_at, 'wanted', t.wanted) ORDER BY q.seq), '[]')
            FROM @schema@.queue q JOIN @schema@.tickets t ON t.id = q.ticket_id
            WHERE q.limit_id = v_limit.id),
        'totals', jsonb_build_object(
            'grants', v_limit.grants, 'granted_units', v_limit.granted_units,
            'timeouts', v_limit.timeouts, 'reclaimed', v_limit.reclaimed,
            'queued_waits', to_jsonb(v_limit.queued_waits),
            'wait_seconds', v_limit.wait_seconds),
        'tat', v_limit.tat, 'now', s.now, 'wake', to_jsonb(@schema@._notify(s)));
END $$;
