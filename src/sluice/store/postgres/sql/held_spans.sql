-- Step: held_spans — who held these limits' units at some time in [since, until]: the
-- ended leases on record (table held) and the claimed leases holding them now (one
-- statement, no locks).
-- Parameters: p_names text[] (limit names), p_since, p_until double precision.
-- Returns: jsonb, a list of [name, holder, units, acquired_at, released_at (null while
--   held), lease id], by acquired_at.
CREATE OR REPLACE FUNCTION @schema@.held_spans(
    p_names text[], p_since double precision, p_until double precision
) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_array(x.name, x.holder, x.units, x.acquired_at,
                                                x.released_at, x.lease_id)
                              ORDER BY x.acquired_at), '[]')
    FROM (
        SELECT l.name, h.holder, h.units, h.acquired_at, h.released_at, h.lease_id
        FROM @schema@.limits l JOIN @schema@.held h ON h.limit_id = l.id
        WHERE l.name = ANY(p_names) AND h.released_at >= p_since AND h.acquired_at <= p_until
        UNION ALL
        SELECT l.name, s.holder, h.units, s.acquired_at, NULL, s.id
        FROM @schema@.limits l
        JOIN @schema@.holdings h ON h.limit_id = l.id
        JOIN @schema@.leases s ON s.id = h.lease_id
        WHERE l.name = ANY(p_names) AND s.claimed AND s.acquired_at <= p_until
    ) x
$$;
