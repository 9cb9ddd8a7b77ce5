-- Step: abandon — withdraw a request: drop its ticket and release any lease granted
-- to it (one transaction).
-- Parameters:
--   p_request_id     text   the request
--   p_process_id     text   the calling process
--   p_timed_out_on   text   the limit it gave up queueing behind (AcquireTimeout), whose
--                           totals count a timeout if it exists; NULL (any other
--                           withdrawal: cancelled, interrupted, failed) counts nothing
-- Returns: jsonb {wake: ticket ids of the caller's process to wake}.
-- Locks: the limits of its queues and of its lease, and p_timed_out_on, in name order.
-- Raises: 40001 if its queues grew while it waited for those locks (retried by the client).
CREATE OR REPLACE FUNCTION @schema@.abandon(
    p_request_id text, p_process_id text, p_timed_out_on text DEFAULT NULL
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_locked bigint[];
    v_ids bigint[];
    v_now double precision;
    v_touched bigint[] := '{}';
    v_moved bigint[] := '{}';
BEGIN
    v_ids := ARRAY(
        SELECT limit_id FROM @schema@.queue WHERE ticket_id = p_request_id
        UNION
        SELECT unnest(limit_ids) FROM @schema@.leases WHERE id = p_request_id
        UNION
        SELECT id FROM @schema@.limits WHERE name = p_timed_out_on);
    v_locked := @schema@._lock(v_ids);
    v_now := @schema@._now();
    v_ids := ARRAY(SELECT limit_id FROM @schema@.queue WHERE ticket_id = p_request_id);
    v_locked := @schema@._try_lock(v_locked, v_ids);
    IF v_locked IS NULL THEN
        RAISE EXCEPTION 'queues changed; try again' USING ERRCODE = '40001';
    END IF;
    IF p_timed_out_on IS NOT NULL THEN
        -- Locked above, unless it was created after that read: then it waited for nobody.
        UPDATE @schema@.limits SET timeouts = timeouts + 1
        WHERE name = p_timed_out_on AND id = ANY(v_locked);
    END IF;
    v_ids := @schema@._drop_ticket(p_request_id, v_ids);
    IF v_ids IS NOT NULL THEN
        v_touched := v_ids;
        v_moved := v_ids;
    END IF;
    v_touched := v_touched || @schema@._revoke(ARRAY[p_request_id]);
    IF cardinality(v_touched) = 0 THEN
        RETURN jsonb_build_object('wake', '[]'::jsonb);
    END IF;
    RETURN jsonb_build_object('wake', to_jsonb(@schema@._hand_off(
        v_touched, v_moved, v_locked, NULL, NULL, p_process_id, v_now)));
END $$;
