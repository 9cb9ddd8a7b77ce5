-- Step: release — give a lease's units back and hand them to waiters (one transaction).
-- Parameters:
--   p_lease_id    text      the lease
--   p_process_id  text      the calling process (its own waiters are woken by the caller)
-- Returns: jsonb {found: false when the lease was already gone (released, expired,
--   revoked), wake: ticket ids of the caller's process to wake}. A lease released
--   after it expired, before anything reclaimed it, counts as reclaimed in the
--   totals of the limits it held.
-- Locks: the lease's limits, in name order.
CREATE OR REPLACE FUNCTION @schema@.release(p_lease_id text, p_process_id text)
RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_limit_ids bigint[];
    v_locked bigint[];
    v_lease record;
    v_now double precision;
BEGIN
    SELECT limit_ids INTO v_limit_ids FROM @schema@.leases WHERE id = p_lease_id;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('found', false, 'wake', '[]'::jsonb);
    END IF;
    IF cardinality(v_limit_ids) = 1 THEN
        PERFORM FROM @schema@.limits WHERE id = v_limit_ids[1] FOR UPDATE;
        v_locked := v_limit_ids;
    ELSE
        v_locked := @schema@._lock(v_limit_ids);
    END IF;
    v_now := @schema@._now();
    DELETE FROM @schema@.leases WHERE id = p_lease_id RETURNING expires_at, limit_ids INTO v_lease;
    IF NOT FOUND THEN  -- revoked while this step waited for the locks
        RETURN jsonb_build_object('found', false, 'wake', '[]'::jsonb);
    END IF;
    IF cardinality(v_lease.limit_ids) = 1 THEN
        -- Fast path: one limit, and nobody waits for it: nothing to hand off.
        WITH units AS (
            DELETE FROM @schema@.holdings
            WHERE limit_id = v_lease.limit_ids[1] AND lease_id = p_lease_id
            RETURNING units
        )
        UPDATE @schema@.limits
        SET in_use = in_use - (SELECT units FROM units),
            reclaimed = reclaimed + CASE WHEN v_lease.expires_at > v_now THEN 0 ELSE 1 END
        WHERE id = v_lease.limit_ids[1];
        IF NOT EXISTS (SELECT 1 FROM @schema@.queue WHERE limit_id = v_lease.limit_ids[1]) THEN
            RETURN jsonb_build_object('found', v_lease.expires_at > v_now, 'wake', '[]'::jsonb);
        END IF;
        RETURN jsonb_build_object(
            'found', v_lease.expires_at > v_now,
            'wake', to_jsonb(@schema@._hand_off(v_lease.limit_ids, '{}', v_locked, NULL, NULL,
                                                p_process_id, v_now)));
    END IF;
    WITH units AS (
        DELETE FROM @schema@.holdings WHERE lease_id = p_lease_id
                                         AND limit_id = ANY(v_lease.limit_ids)
        RETURNING limit_id, units
    )
    UPDATE @schema@.limits l
    SET in_use = l.in_use - u.units,
        reclaimed = l.reclaimed + CASE WHEN v_lease.expires_at > v_now THEN 0 ELSE 1 END
    FROM units u WHERE l.id = u.limit_id;
    RETURN jsonb_build_object(
        'found', v_lease.expires_at > v_now,
        'wake', to_jsonb(@schema@._hand_off(v_lease.limit_ids, '{}', v_locked, NULL, NULL,
                                            p_process_id, v_now)));
END $$;
