-- Engine: the helpers every step function shares (schema @schema@), the PostgreSQL
-- twin of sluice/store/sqlite/engine.py: the same decisions, in the same order.
-- Parameters: none (installed with the step functions). Internal: clients call
-- the step functions (acquire.sql, release.sql, ...), never these.
--
-- Locking rule, which keeps steps free of deadlocks: a step first locks, with
-- ONE blocking statement, the rows of the limits it works on, in name order
-- (_lock, _lock_names). Any limit it needs later (the other limits of a
-- multi-limit waiter, of an expired lease) it only tries to lock (_try_lock,
-- SKIP LOCKED): it never waits for a second batch. It changes the holdings and
-- queue of a limit only while holding that limit's row lock, and reads them in
-- a statement that starts after the lock was granted (READ COMMITTED gives
-- each statement a fresh snapshot), so what it reads is current.
--
-- State a step carries (what it touched, whom to wake) travels in arguments
-- and results: touched = limits whose units or queue changed (hand-off runs on
-- them); moved = limits whose queue head may have changed.

-- The database clock, in seconds since the epoch.
CREATE OR REPLACE FUNCTION @schema@._now() RETURNS double precision
LANGUAGE sql VOLATILE AS $$
    SELECT extract(epoch FROM clock_timestamp())::double precision
$$;

-- (Helpers are PL/pgSQL, not SQL functions: PL/pgSQL keeps its query plans for
-- the session, where an SQL function is planned again on every call.)

-- Lock limit rows by id, in name order (the step's one blocking lock); returns their ids.
CREATE OR REPLACE FUNCTION @schema@._lock(p_ids bigint[]) RETURNS bigint[]
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN ARRAY(SELECT id FROM @schema@.limits WHERE id = ANY(p_ids) ORDER BY name FOR UPDATE);
END $$;

-- Lock limit rows by name, in name order; returns their ids.
CREATE OR REPLACE FUNCTION @schema@._lock_names(p_names text[]) RETURNS bigint[]
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN ARRAY(SELECT id FROM @schema@.limits WHERE name = ANY(p_names) ORDER BY name
                 FOR UPDATE);
END $$;

-- Try to add limits to the locked set without waiting: the new set, or NULL if
-- another step holds one of them (what was locked stays locked until commit).
CREATE OR REPLACE FUNCTION @schema@._try_lock(p_locked bigint[], p_ids bigint[])
RETURNS bigint[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_want bigint[] := ARRAY(SELECT unnest(p_ids) EXCEPT SELECT unnest(p_locked));
    v_got bigint[];
BEGIN
    IF cardinality(v_want) = 0 THEN
        RETURN p_locked;
    END IF;
    v_got := ARRAY(SELECT id FROM @schema@.limits WHERE id = ANY(v_want) FOR UPDATE SKIP LOCKED);
    IF cardinality(v_got) < (SELECT count(*) FROM @schema@.limits WHERE id = ANY(v_want)) THEN
        RETURN NULL;
    END IF;
    RETURN p_locked || v_got;
END $$;

-- The limits with these ids (locked by the caller), in name order, each with
-- its queue head's seq and its units in use.
CREATE OR REPLACE FUNCTION @schema@._rows(p_ids bigint[]) RETURNS @schema@.limit_row[]
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN ARRAY(
        SELECT ROW(l.id, l.name, l.slots, l.rate, l.burst, l.active, l.lease_ttl, l.tat,
                   (SELECT min(q.seq) FROM @schema@.queue q WHERE q.limit_id = l.id),
                   l.in_use)::@schema@.limit_row
        FROM @schema@.limits l WHERE l.id = ANY(p_ids) ORDER BY l.name);
END $$;

-- The active rows among these, keeping their (name) order.
CREATE OR REPLACE FUNCTION @schema@._active(p_rows @schema@.limit_row[])
RETURNS @schema@.limit_row[] LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_row @schema@.limit_row;
    v_active @schema@.limit_row[] := '{}';
BEGIN
    FOREACH v_row IN ARRAY p_rows LOOP
        IF v_row.active THEN
            v_active := v_active || v_row;
        END IF;
    END LOOP;
    RETURN v_active;
END $$;

-- The ids of these rows, in their order.
CREATE OR REPLACE FUNCTION @schema@._ids(p_rows @schema@.limit_row[]) RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_row @schema@.limit_row;
    v_ids bigint[] := '{}';
BEGIN
    FOREACH v_row IN ARRAY p_rows LOOP
        v_ids := v_ids || v_row.id;
    END LOOP;
    RETURN v_ids;
END $$;

-- The most units one request of this kind may take on a limit (Limit.max_occupy).
CREATE OR REPLACE FUNCTION @schema@._max_occupy(p_row @schema@.limit_row, p_kind text)
RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_kind = 'concurrency' AND p_row.slots IS NOT NULL
            THEN least(p_row.slots, coalesce(p_row.burst, p_row.slots))
        ELSE p_row.burst
    END
$$;

-- Whether no amount of waiting can serve this claim on these limits as they are now.
CREATE OR REPLACE FUNCTION @schema@._impossible(
    p_kind text, p_occupy integer, p_active @schema@.limit_row[]
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_row @schema@.limit_row;
    v_bound integer;
BEGIN
    FOREACH v_row IN ARRAY p_active LOOP
        IF p_kind = 'rate' AND v_row.rate IS NULL THEN
            RETURN true;
        END IF;
        v_bound := @schema@._max_occupy(v_row, p_kind);
        IF v_bound IS NOT NULL AND p_occupy > v_bound THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END $$;

-- Why each active limit refuses the request now ('queue', 'slots', 'rate'), or
-- NULL where it admits it: an array parallel to p_active. Rate math is
-- sluice/limits/gcra.py's allow_at, in the same float operations.
CREATE OR REPLACE FUNCTION @schema@._blockers(
    p_kind text, p_occupy integer, p_active @schema@.limit_row[], p_seq bigint,
    p_now double precision
) RETURNS text[] LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_row @schema@.limit_row;
    v_why text[] := '{}';
BEGIN
    FOREACH v_row IN ARRAY p_active LOOP
        IF v_row.head_seq IS NOT NULL AND (p_seq IS NULL OR v_row.head_seq < p_seq) THEN
            v_why := v_why || 'queue'::text;
        ELSIF p_kind = 'concurrency' AND v_row.slots IS NOT NULL
                AND v_row.in_use + p_occupy > v_row.slots THEN
            v_why := v_why || 'slots'::text;
        ELSIF v_row.rate IS NOT NULL AND v_row.burst IS NOT NULL
                AND v_row.tat + (p_occupy - v_row.burst)::double precision / v_row.rate > p_now THEN
            v_why := v_why || 'rate'::text;
        ELSE
            v_why := v_why || NULL::text;
        END IF;
    END LOOP;
    RETURN v_why;
END $$;

-- Whether any entry of a _blockers result refuses.
CREATE OR REPLACE FUNCTION @schema@._any(p_why text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT array_position(p_why, 'queue') IS NOT NULL OR array_position(p_why, 'slots') IS NOT NULL
        OR array_position(p_why, 'rate') IS NOT NULL
$$;

-- The bucket of the totals' histogram of queued waits a wait falls in, 1-based:
-- the first bound of sluice.limits.model.WAIT_BUCKETS it does not exceed (the
-- wait_bucket() there, plus one), or 13 past the last. NULL for NULL.
CREATE OR REPLACE FUNCTION @schema@._wait_bucket(p_wait double precision) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT CASE
        WHEN p_wait <= 0.001::double precision THEN 1
        WHEN p_wait <= 0.005::double precision THEN 2
        WHEN p_wait <= 0.01::double precision THEN 3
        WHEN p_wait <= 0.05::double precision THEN 4
        WHEN p_wait <= 0.1::double precision THEN 5
        WHEN p_wait <= 0.5::double precision THEN 6
        WHEN p_wait <= 1.0::double precision THEN 7
        WHEN p_wait <= 5.0::double precision THEN 8
        WHEN p_wait <= 10.0::double precision THEN 9
        WHEN p_wait <= 30.0::double precision THEN 10
        WHEN p_wait <= 60.0::double precision THEN 11
        WHEN p_wait <= 300.0::double precision THEN 12
        ELSE 13
    END
$$;

-- A Granted outcome, as the client parses it.
CREATE OR REPLACE FUNCTION @schema@._granted(
    p_lease_id text, p_names text[], p_acquired_at double precision,
    p_expires_at double precision, p_lease_ttl double precision, p_missing text[]
) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'granted', true, 'lease_id', p_lease_id, 'names', to_jsonb(p_names),
        'acquired_at', p_acquired_at, 'expires_at', p_expires_at, 'lease_ttl', p_lease_ttl,
        'missing', to_jsonb(p_missing))
$$;

-- Delete leases and every unit they hold; returns the limits touched. With
-- p_expired_at set, only leases still expired at that time go: a renewal that
-- committed while this step waited for the row wins. Those are reclaimed
-- because they expired, which the totals of the limits they held units of
-- count (reclaimed); without it (release by abandon, reset, a forced delete,
-- a process's exit) nothing is counted.
CREATE OR REPLACE FUNCTION @schema@._revoke(
    p_lease_ids text[], p_expired_at double precision DEFAULT NULL
) RETURNS bigint[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_touched bigint[];
BEGIN
    IF cardinality(p_lease_ids) = 0 THEN
        RETURN '{}';
    END IF;
    WITH gone AS (
        DELETE FROM @schema@.leases
        WHERE id = ANY(p_lease_ids) AND (p_expired_at IS NULL OR expires_at <= p_expired_at)
        RETURNING id, limit_ids
    ), units AS (
        DELETE FROM @schema@.holdings h USING gone g
        WHERE h.lease_id = g.id AND h.limit_id = ANY(g.limit_ids)
        RETURNING h.limit_id, h.units
    ), counted AS (
        UPDATE @schema@.limits l
        SET in_use = l.in_use - u.units,
            reclaimed = l.reclaimed + CASE WHEN p_expired_at IS NULL THEN 0 ELSE u.leases END
        FROM (SELECT limit_id, sum(units) AS units, count(*) AS leases
              FROM units GROUP BY limit_id) u
        WHERE l.id = u.limit_id
    )
    SELECT coalesce(array_agg(DISTINCT limit_id), '{}') INTO v_touched
    FROM (SELECT unnest(limit_ids) AS limit_id FROM gone) touched;
    RETURN v_touched;
END $$;

-- Withdraw a ticket from every queue it is in; returns those limits (touched
-- and moved), or NULL if there was no such ticket. p_limit_ids: its queues, if
-- the caller knows them. With p_expired_at set, only a ticket still expired
-- at that time goes.
CREATE OR REPLACE FUNCTION @schema@._drop_ticket(
    p_ticket_id text, p_limit_ids bigint[] DEFAULT NULL,
    p_expired_at double precision DEFAULT NULL
) RETURNS bigint[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_ids bigint[] := p_limit_ids;
    v_count integer;
BEGIN
    IF v_ids IS NULL THEN
        v_ids := ARRAY(SELECT limit_id FROM @schema@.queue WHERE ticket_id = p_ticket_id);
    END IF;
    DELETE FROM @schema@.tickets
    WHERE id = p_ticket_id AND (p_expired_at IS NULL OR expires_at <= p_expired_at);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count = 0 AND (p_expired_at IS NOT NULL OR cardinality(v_ids) = 0) THEN
        RETURN NULL;
    END IF;
    DELETE FROM @schema@.queue WHERE ticket_id = p_ticket_id;
    RETURN v_ids;
END $$;

-- Take the claim's tokens and units on every active limit, count the grant in
-- their totals, and record its lease. p_queued_since: when the claim's ticket
-- was created, if it queued (its wait goes into the totals' histogram of queued
-- waits), else NULL. A rate grant is recorded only when handed to a sleeping
-- waiter (p_record_rate), for it to collect; otherwise it leaves nothing
-- behind. Returns a Granted.
CREATE OR REPLACE FUNCTION @schema@._take(
    p_id text, p_process_id text, p_holder text, p_host text, p_pid integer,
    p_occupy integer, p_kind text, p_active @schema@.limit_row[], p_missing text[],
    p_record_rate boolean, p_now double precision, p_queued_since double precision
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_row @schema@.limit_row;
    v_names text[] := '{}';
    v_ttl double precision := 30.0;   -- DEFAULT_LEASE_TTL when no limit is active
    v_hold bigint[] := '{}';
    v_expires double precision;
    v_tat double precision;
    v_units integer;
    v_wait double precision := CASE WHEN p_queued_since IS NOT NULL
                                    THEN greatest(p_now - p_queued_since, 0) END;
    v_bucket integer := @schema@._wait_bucket(v_wait);
BEGIN
    FOREACH v_row IN ARRAY p_active LOOP
        v_names := v_names || v_row.name;
        v_ttl := CASE WHEN cardinality(v_names) = 1 THEN v_row.lease_ttl
                      ELSE least(v_ttl, v_row.lease_ttl) END;
        v_tat := v_row.tat;
        IF v_row.rate IS NOT NULL AND v_row.burst IS NOT NULL
                AND p_now >= v_row.tat + (p_occupy - v_row.burst)::double precision / v_row.rate
        THEN
            -- gcra.decide: granted (the caller checked), so tat moves on.
            v_tat := greatest(v_row.tat, p_now) + p_occupy::double precision / v_row.rate;
        END IF;
        v_units := CASE WHEN p_kind = 'concurrency' AND v_row.slots IS NOT NULL
                        THEN p_occupy ELSE 0 END;
        IF v_units > 0 THEN
            v_hold := v_hold || v_row.id;
        END IF;
        IF v_wait IS NULL THEN
            UPDATE @schema@.limits
            SET tat = v_tat, in_use = in_use + v_units, grants = grants + 1,
                granted_units = granted_units + p_occupy
            WHERE id = v_row.id;
        ELSE
            UPDATE @schema@.limits
            SET tat = v_tat, in_use = in_use + v_units, grants = grants + 1,
                granted_units = granted_units + p_occupy, wait_seconds = wait_seconds + v_wait,
                queued_waits[v_bucket] = coalesce(queued_waits[v_bucket], 0) + 1
            WHERE id = v_row.id;
        END IF;
    END LOOP;
    IF p_kind = 'rate' AND NOT p_record_rate THEN
        RETURN @schema@._granted(NULL, v_names, p_now, NULL, NULL, p_missing);
    END IF;
    v_expires := p_now + v_ttl;
    INSERT INTO @schema@.leases (id, limit_ids, names, kind, process_id, holder, host, pid,
                                 occupy, lease_ttl, acquired_at, expires_at)
    VALUES (p_id, v_hold, v_names, p_kind, p_process_id, p_holder, p_host, p_pid,
            p_occupy, v_ttl, p_now, v_expires);
    IF cardinality(v_hold) > 0 THEN
        INSERT INTO @schema@.holdings (limit_id, lease_id, units)
        SELECT unnest(v_hold), p_id, p_occupy;
    END IF;
    IF p_kind = 'rate' THEN
        RETURN @schema@._granted(NULL, v_names, p_now, NULL, NULL, p_missing);
    END IF;
    RETURN @schema@._granted(p_id, v_names, p_now, v_expires, v_ttl, p_missing);
END $$;

-- The grant a step handed to this request while it slept, if any (a Granted),
-- else NULL; a concurrency grant already past its TTL is left for the caller.
CREATE OR REPLACE FUNCTION @schema@._collect(p_id text, p_now double precision)
RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_lease record;
BEGIN
    SELECT names, kind, acquired_at, expires_at, lease_ttl INTO v_lease
    FROM @schema@.leases WHERE id = p_id;
    IF NOT FOUND OR (v_lease.kind = 'concurrency' AND v_lease.expires_at <= p_now) THEN
        RETURN NULL;
    END IF;
    IF v_lease.kind = 'rate' THEN
        DELETE FROM @schema@.leases WHERE id = p_id;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        RETURN @schema@._granted(NULL, v_lease.names, v_lease.acquired_at, NULL, NULL, '{}');
    END IF;
    RETURN @schema@._granted(p_id, v_lease.names, v_lease.acquired_at, v_lease.expires_at,
                             v_lease.lease_ttl, '{}');
END $$;

-- When something that sends no wake-up (a rate token, the expiry of a lease or
-- ticket in the way) may let this request in: seconds from now, or NULL.
CREATE OR REPLACE FUNCTION @schema@._retry_in(
    p_occupy integer, p_active @schema@.limit_row[], p_why text[], p_seq bigint,
    p_now double precision
) RETURNS double precision LANGUAGE plpgsql VOLATILE
-- Plain index scans: they skip (and mark) index entries of rows deleted long ago.
SET enable_bitmapscan = off SET enable_seqscan = off AS $$
DECLARE
    v_at double precision;
    v_soonest double precision;
    v_row @schema@.limit_row;
    i integer;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_active), 0) LOOP
        v_row := p_active[i];
        IF p_why[i] = 'rate' THEN
            v_at := v_row.tat + (p_occupy - v_row.burst)::double precision / v_row.rate;
        ELSIF p_why[i] = 'queue' THEN
            SELECT min(t.expires_at) INTO v_at
            FROM @schema@.queue q JOIN @schema@.tickets t ON t.id = q.ticket_id
            WHERE q.limit_id = v_row.id AND q.seq < p_seq;
        ELSIF p_why[i] = 'slots' THEN
            SELECT min(l.expires_at) INTO v_at
            FROM @schema@.holdings h JOIN @schema@.leases l ON l.id = h.lease_id
            WHERE h.limit_id = v_row.id;
        ELSE
            CONTINUE;
        END IF;
        v_soonest := least(v_soonest, v_at);
    END LOOP;
    IF v_soonest IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN greatest(0.001, v_soonest - p_now);
END $$;

-- Queue a request that was refused (or refresh the ticket of a retry, keeping
-- its place) on every active limit it names; returns a Queued.
CREATE OR REPLACE FUNCTION @schema@._queue(
    p_request_id text, p_names text[], p_occupy integer, p_kind text, p_holder text,
    p_process_id text, p_host text, p_pid integer, p_active @schema@.limit_row[],
    p_missing text[], p_seq bigint, p_has_ticket boolean, p_why text[],
    p_now double precision
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_ids bigint[] := @schema@._ids(p_active);
    v_ttl double precision := (SELECT min(r.lease_ttl) FROM unnest(p_active) r);
    v_seq bigint := p_seq;
    v_first integer;
    v_position bigint;
BEGIN
    IF p_has_ticket THEN
        UPDATE @schema@.tickets SET expires_at = p_now + v_ttl, limit_count = cardinality(v_ids)
        WHERE id = p_request_id;
        -- It waits in the queues of exactly the active limits it names, now.
        DELETE FROM @schema@.queue WHERE ticket_id = p_request_id AND limit_id <> ALL(v_ids);
        INSERT INTO @schema@.queue (limit_id, seq, ticket_id, occupy, kind)
        SELECT unnest(v_ids), v_seq, p_request_id, p_occupy, p_kind
        ON CONFLICT DO NOTHING;
    ELSE
        -- A newcomer takes the next place in arrival order; a lapsed ticket its old one.
        v_seq := coalesce(v_seq, nextval('@schema@.ticket_seq'));
        INSERT INTO @schema@.tickets (seq, id, process_id, holder, host, pid, occupy, kind,
                                      names, limit_count, lease_ttl, created_at, expires_at)
        VALUES (v_seq, p_request_id, p_process_id, p_holder, p_host, p_pid, p_occupy, p_kind,
                p_names, cardinality(v_ids), v_ttl, p_now, p_now + v_ttl);
        INSERT INTO @schema@.queue (limit_id, seq, ticket_id, occupy, kind)
        SELECT unnest(v_ids), v_seq, p_request_id, p_occupy, p_kind;
    END IF;
    SELECT min(i) INTO v_first FROM unnest(p_why) WITH ORDINALITY AS w(why, i)
    WHERE why IS NOT NULL;
    SELECT count(*) + 1 INTO v_position FROM @schema@.queue
    WHERE limit_id = p_active[v_first].id AND seq < v_seq;
    RETURN jsonb_build_object(
        'granted', false, 'request_id', p_request_id, 'seq', v_seq,
        'blocked_on', p_active[v_first].name, 'position', v_position,
        'retry_in', @schema@._retry_in(p_occupy, p_active, p_why, v_seq, p_now),
        'lease_ttl', v_ttl, 'missing', to_jsonb(p_missing));
END $$;

-- Remove expired leases and tickets in the way on these limits. Returns whether
-- anything went, what it touched and moved, and the locked set (grown by the
-- other limits of what went). One whose other limits another step holds right
-- now is left for later: it still blocks, and its past expiry makes the
-- blocked request look again at once.
CREATE OR REPLACE FUNCTION @schema@._reclaim(
    p_limit_ids bigint[], p_locked bigint[], p_now double precision,
    OUT changed boolean, OUT touched bigint[], OUT moved bigint[], OUT locked bigint[]
) LANGUAGE plpgsql VOLATILE
SET enable_bitmapscan = off SET enable_seqscan = off AS $$
DECLARE
    v_item record;
    v_try bigint[];
    v_ids bigint[];
BEGIN
    changed := false;
    touched := '{}';
    moved := '{}';
    locked := p_locked;
    FOR v_item IN
        SELECT DISTINCT l.id, l.limit_ids FROM @schema@.holdings h
        JOIN @schema@.leases l ON l.id = h.lease_id
        WHERE h.limit_id = ANY(p_limit_ids) AND l.expires_at <= p_now
    LOOP
        v_try := @schema@._try_lock(locked, v_item.limit_ids);
        CONTINUE WHEN v_try IS NULL;
        locked := v_try;
        v_ids := @schema@._revoke(ARRAY[v_item.id], p_now);
        IF cardinality(v_ids) > 0 THEN
            touched := touched || v_ids;
            changed := true;
        END IF;
    END LOOP;
    FOR v_item IN
        SELECT DISTINCT t.id FROM @schema@.queue q JOIN @schema@.tickets t ON t.id = q.ticket_id
        WHERE q.limit_id = ANY(p_limit_ids) AND t.expires_at <= p_now
    LOOP
        v_ids := ARRAY(SELECT limit_id FROM @schema@.queue WHERE ticket_id = v_item.id);
        v_try := @schema@._try_lock(locked, v_ids);
        CONTINUE WHEN v_try IS NULL;
        locked := v_try;
        v_ids := @schema@._drop_ticket(v_item.id, v_ids, p_now);
        IF v_ids IS NOT NULL THEN
            touched := touched || v_ids;
            moved := moved || v_ids;
            changed := true;
        END IF;
    END LOOP;
END $$;

-- Lock, in name order and waiting (the step's one blocking lock), the limits
-- p_also and every limit that a waiter naming p_name waits on: a step that
-- makes such waiters join a queue must hold them, as every step that drops a
-- ticket holds its queues, or a ticket dropped meanwhile would leave its new
-- queue row behind. Returns the locked ids.
CREATE OR REPLACE FUNCTION @schema@._lock_for_join(p_name text, p_also bigint[])
RETURNS bigint[] LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN @schema@._lock(p_also || ARRAY(
        SELECT q.limit_id FROM @schema@.tickets t JOIN @schema@.queue q ON q.ticket_id = t.id
        WHERE p_name = ANY(t.names)));
END $$;

-- Queue on a limit that now counts (enabled, or created) every waiter naming
-- it, at the place its arrival gives it; returns whether any joined. The
-- caller holds (_lock_for_join) the queues those waiters are in; one that
-- queued elsewhere meanwhile makes the step start over (40001).
CREATE OR REPLACE FUNCTION @schema@._join_waiters(
    p_limit_id bigint, p_name text, p_locked bigint[]
) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_ticket record;
    v_joined boolean := false;
    v_locked bigint[] := p_locked;
BEGIN
    FOR v_ticket IN
        SELECT id, seq, occupy, kind FROM @schema@.tickets WHERE p_name = ANY(names) ORDER BY seq
    LOOP
        v_locked := @schema@._try_lock(v_locked, ARRAY(
            SELECT limit_id FROM @schema@.queue WHERE ticket_id = v_ticket.id));
        IF v_locked IS NULL THEN
            RAISE EXCEPTION 'waiters of % changed; try again', p_name USING ERRCODE = '40001';
        END IF;
        INSERT INTO @schema@.queue (limit_id, seq, ticket_id, occupy, kind)
        VALUES (p_limit_id, v_ticket.seq, v_ticket.id, v_ticket.occupy, v_ticket.kind)
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            UPDATE @schema@.tickets SET limit_count = limit_count + 1 WHERE id = v_ticket.id;
            v_joined := true;
        END IF;
    END LOOP;
    RETURN v_joined;
END $$;

-- Grant waiting tickets that fit now, in arrival order, and wake whom it concerns.
--
-- Runs at the end of every step that changed a limit's units or queue. On each
-- such limit the head ticket is granted if it can be on every limit it waits
-- for (it heads each of those queues too, and units and tokens suffice); then
-- the next, and so on, stopping at the first that cannot be served: strict
-- FIFO, with no capacity left idle while the head could use it. Granted
-- tickets are woken to collect their grant; a head left waiting is woken when
-- it changed, to learn when its next rate token is due. A head whose other
-- limits another step holds right now is woken instead: its own retry takes
-- every lock it needs in order and serves it. An expired head ticket (its
-- process died or hung) is dropped, never handed units.
--
-- Wake-ups go out with pg_notify on channel 'sluice_<process id>', payload
-- {"w": [ticket ids], "g": {ticket id: grant}} (chunks of 20 tickets, well
-- under the 8000-byte limit): the concurrency grants handed to those tickets
-- travel with the wake-up, so their waiters need not ask again. They are
-- delivered when the step commits. Returns the ticket ids of p_me (the
-- calling process), which it wakes itself.
CREATE OR REPLACE FUNCTION @schema@._hand_off(
    p_touched bigint[], p_moved bigint[], p_locked bigint[], p_wake_tickets text[],
    p_wake_processes text[], p_me text, p_now double precision
) RETURNS text[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_work bigint[] := ARRAY(SELECT DISTINCT unnest(p_touched || p_moved) ORDER BY 1);
    v_done bigint[] := '{}';
    v_moved bigint[] := p_moved;
    v_locked bigint[] := p_locked;
    v_wake_t text[] := coalesce(p_wake_tickets, '{}');
    v_wake_p text[] := coalesce(p_wake_processes, '{}');
    v_limit bigint;
    v_granted_here boolean;
    v_head record;
    v_here @schema@.limit_row;
    v_rows @schema@.limit_row[];
    v_active @schema@.limit_row[];
    v_why text[];
    v_ids bigint[];
    v_try bigint[];
    v_others bigint[];
    v_target record;
    v_chunk integer;
    v_ids_chunk text[];
    v_grants jsonb := '{}';
    v_grant jsonb;
    v_wait double precision;
    v_bucket integer;
BEGIN
    WHILE cardinality(v_work) > 0 LOOP
        v_limit := v_work[1];
        v_work := v_work[2:];
        CONTINUE WHEN v_limit = ANY(v_done);
        v_done := v_done || v_limit;
        v_granted_here := false;
        LOOP
            SELECT t.id, t.seq, t.process_id, t.holder, t.host, t.pid, t.occupy, t.kind,
                   t.limit_count, t.created_at, t.expires_at, l.id AS limit_id, l.name,
                   l.slots, l.rate, l.burst, l.active, l.lease_ttl, l.tat, l.in_use
            INTO v_head
            FROM @schema@.queue q JOIN @schema@.tickets t ON t.id = q.ticket_id
            JOIN @schema@.limits l ON l.id = q.limit_id
            WHERE q.limit_id = v_limit ORDER BY q.seq LIMIT 1;
            EXIT WHEN NOT FOUND;
            -- This limit, whose queue the ticket heads.
            v_here := ROW(v_head.limit_id, v_head.name, v_head.slots, v_head.rate, v_head.burst,
                          v_head.active, v_head.lease_ttl, v_head.tat, v_head.seq,
                          v_head.in_use)::@schema@.limit_row;
            IF v_head.active AND v_head.kind = 'concurrency' AND v_head.slots IS NOT NULL
                    AND v_head.in_use + v_head.occupy > v_head.slots THEN
                IF v_limit = ANY(v_moved) AND v_head.occupy > v_head.slots THEN
                    -- slots now below its occupy: its retry says so, and leaves the queue
                    v_wake_t := v_wake_t || v_head.id;
                    v_wake_p := v_wake_p || v_head.process_id;
                END IF;
                EXIT;  -- no room on this limit: the common case, decided in one query
            END IF;
            IF v_head.limit_count = 1 AND v_head.active AND v_head.expires_at > p_now
                    AND NOT (v_head.kind = 'rate' AND v_head.rate IS NULL)
                    AND (v_head.burst IS NULL OR v_head.occupy <= v_head.burst)
                    AND (v_head.rate IS NULL OR v_head.tat + (v_head.occupy - v_head.burst)
                                                 ::double precision / v_head.rate <= p_now) THEN
                -- Fast path, the same decision in scalars: a ticket waiting on this
                -- limit only, with units (checked above) and a token now: grant it,
                -- and count the grant and its wait in the limit's totals (as _take).
                DELETE FROM @schema@.tickets WHERE id = v_head.id;
                DELETE FROM @schema@.queue WHERE ticket_id = v_head.id;
                v_moved := v_moved || v_limit;
                v_wait := greatest(p_now - v_head.created_at, 0);
                v_bucket := @schema@._wait_bucket(v_wait);
                UPDATE @schema@.limits
                SET tat = CASE WHEN v_head.rate IS NULL THEN tat
                               ELSE greatest(v_head.tat, p_now)
                                    + v_head.occupy::double precision / v_head.rate END,
                    in_use = in_use + CASE WHEN v_head.kind = 'concurrency'
                                             AND v_head.slots IS NOT NULL
                                           THEN v_head.occupy ELSE 0 END,
                    grants = grants + 1, granted_units = granted_units + v_head.occupy,
                    wait_seconds = wait_seconds + v_wait,
                    queued_waits[v_bucket] = coalesce(queued_waits[v_bucket], 0) + 1
                WHERE id = v_limit;
                INSERT INTO @schema@.leases (id, limit_ids, names, kind, process_id, holder, host,
                                             pid, occupy, lease_ttl, acquired_at, expires_at)
                VALUES (v_head.id,
                        CASE WHEN v_head.kind = 'concurrency' AND v_head.slots IS NOT NULL
                             THEN ARRAY[v_limit] ELSE '{}'::bigint[] END,
                        ARRAY[v_head.name], v_head.kind, v_head.process_id, v_head.holder,
                        v_head.host, v_head.pid, v_head.occupy, v_head.lease_ttl, p_now,
                        p_now + v_head.lease_ttl);
                IF v_head.kind = 'concurrency' AND v_head.slots IS NOT NULL THEN
                    INSERT INTO @schema@.holdings (limit_id, lease_id, units)
                    VALUES (v_limit, v_head.id, v_head.occupy);
                END IF;
                IF v_head.kind = 'concurrency' THEN
                    v_grants := v_grants || jsonb_build_object(v_head.id, @schema@._granted(
                        v_head.id, ARRAY[v_head.name], p_now, p_now + v_head.lease_ttl,
                        v_head.lease_ttl, '{}'));
                END IF;
                v_wake_t := v_wake_t || v_head.id;
                v_wake_p := v_wake_p || v_head.process_id;
                v_granted_here := true;
                IF v_head.rate IS NULL AND v_head.slots IS NOT NULL
                        AND v_head.kind = 'concurrency'
                        AND v_head.in_use + v_head.occupy >= v_head.slots THEN
                    EXIT;  -- full now, and no rate token for a new head to wait on: done here
                END IF;
                CONTINUE;
            END IF;
            IF v_head.limit_count = 1 THEN
                v_rows := ARRAY[v_here];
                v_ids := ARRAY[v_limit];
            ELSE
                v_ids := ARRAY(SELECT limit_id FROM @schema@.queue WHERE ticket_id = v_head.id);
                v_try := @schema@._try_lock(v_locked, v_ids);
                IF v_try IS NULL THEN
                    v_wake_t := v_wake_t || v_head.id;
                    v_wake_p := v_wake_p || v_head.process_id;
                    EXIT;
                END IF;
                v_locked := v_try;
                v_rows := @schema@._rows(v_ids);
                v_ids := @schema@._ids(v_rows);
            END IF;
            IF v_head.expires_at <= p_now THEN
                -- Its process died or hung past the TTL: drop it, never hand it units.
                v_ids := @schema@._drop_ticket(v_head.id, v_ids, p_now);
                IF v_ids IS NULL THEN
                    EXIT;  -- renewed meanwhile: it is served on its next turn
                END IF;
                v_moved := v_moved || v_ids;
                v_others := ARRAY(SELECT unnest(v_ids) EXCEPT SELECT v_limit);
                v_work := v_work || v_others;
                v_done := ARRAY(SELECT unnest(v_done) EXCEPT SELECT unnest(v_others));
                CONTINUE;
            END IF;
            v_active := @schema@._active(v_rows);
            IF @schema@._impossible(v_head.kind, v_head.occupy, v_active) THEN
                v_wake_t := v_wake_t || v_head.id;  -- its retry says why, and leaves the queue
                v_wake_p := v_wake_p || v_head.process_id;
                EXIT;
            END IF;
            v_why := @schema@._blockers(v_head.kind, v_head.occupy, v_active, v_head.seq, p_now);
            IF @schema@._any(v_why) THEN
                -- A new head waiting for a rate token must learn when it is due; one
                -- waiting for units is served here when they free up.
                IF (v_granted_here OR v_limit = ANY(v_moved)) AND 'rate' = ANY(v_why) THEN
                    v_wake_t := v_wake_t || v_head.id;
                    v_wake_p := v_wake_p || v_head.process_id;
                END IF;
                EXIT;
            END IF;
            PERFORM @schema@._drop_ticket(v_head.id, v_ids);
            v_moved := v_moved || v_ids;
            v_grant := @schema@._take(v_head.id, v_head.process_id, v_head.holder,
                                      v_head.host, v_head.pid, v_head.occupy, v_head.kind,
                                      v_active, '{}', true, p_now, v_head.created_at);
            IF v_head.kind = 'concurrency' THEN
                v_grants := v_grants || jsonb_build_object(v_head.id, v_grant);
            END IF;
            v_wake_t := v_wake_t || v_head.id;
            v_wake_p := v_wake_p || v_head.process_id;
            v_granted_here := true;
            -- Its other queues moved too.
            v_others := ARRAY(SELECT unnest(v_ids) EXCEPT SELECT v_limit);
            v_work := v_work || v_others;
            v_done := ARRAY(SELECT unnest(v_done) EXCEPT SELECT unnest(v_others));
            IF v_head.active AND v_head.rate IS NULL AND v_head.slots IS NOT NULL
                    AND v_head.kind = 'concurrency'
                    AND v_head.in_use + v_head.occupy >= v_head.slots THEN
                EXIT;  -- full now, and no rate token for a new head to wait on: done here
            END IF;
        END LOOP;
    END LOOP;
    FOR v_target IN
        SELECT w.p, array_agg(DISTINCT w.t) AS tickets
        FROM unnest(v_wake_p, v_wake_t) AS w(p, t)
        WHERE w.p IS DISTINCT FROM p_me GROUP BY w.p
    LOOP
        FOR v_chunk IN 0 .. (cardinality(v_target.tickets) - 1) / 20 LOOP
            v_ids_chunk := v_target.tickets[v_chunk * 20 + 1 : v_chunk * 20 + 20];
            PERFORM pg_notify('sluice_' || v_target.p, jsonb_build_object(
                'w', to_jsonb(v_ids_chunk),
                'g', (SELECT coalesce(jsonb_object_agg(g.key, g.value), '{}')
                      FROM jsonb_each(v_grants) g WHERE g.key = ANY(v_ids_chunk)))::text);
        END LOOP;
    END LOOP;
    RETURN ARRAY(SELECT DISTINCT w.t FROM unnest(v_wake_p, v_wake_t) AS w(p, t)
                 WHERE w.p = p_me);
END $$;

-- A limit as the client parses it.
CREATE OR REPLACE FUNCTION @schema@._limit_json(p_limit @schema@.limits) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'name', p_limit.name, 'slots', p_limit.slots, 'rate', p_limit.rate,
        'burst', p_limit.burst, 'active', p_limit.active, 'lease_ttl', p_limit.lease_ttl)
$$;

-- Raise LimitNotFound for one name.
CREATE OR REPLACE FUNCTION @schema@._not_found(p_name text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE EXCEPTION 'no limit named %', p_name
        USING ERRCODE = 'SL404', DETAIL = to_jsonb(ARRAY[p_name])::text;
END $$;

-- Lock the named limit and every other limit its leases hold (and, with
-- p_with_queues, those its waiters wait on), in name order, waiting for each:
-- the step's one blocking lock. Returns the locked ids, the named limit's first.
-- Raises SL404 if absent, 40001 if what it covers grew meanwhile (retried).
CREATE OR REPLACE FUNCTION @schema@._lock_around(p_name text, p_with_queues boolean)
RETURNS bigint[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_id bigint;
    v_want bigint[];
    v_locked bigint[];
BEGIN
    SELECT id INTO v_id FROM @schema@.limits WHERE name = p_name;
    IF NOT FOUND THEN
        PERFORM @schema@._not_found(p_name);
    END IF;
    v_want := @schema@._around(v_id, p_with_queues);
    v_locked := @schema@._lock(v_want);
    IF NOT v_id = ANY(v_locked) THEN  -- deleted while this step waited
        PERFORM @schema@._not_found(p_name);
    END IF;
    v_locked := @schema@._try_lock(v_locked, @schema@._around(v_id, p_with_queues));
    IF v_locked IS NULL THEN
        RAISE EXCEPTION 'limits held changed; try again' USING ERRCODE = '40001';
    END IF;
    RETURN v_id || ARRAY(SELECT unnest(v_locked) EXCEPT SELECT v_id);
END $$;

-- A limit and the other limits of its leases (and of its waiters' tickets).
CREATE OR REPLACE FUNCTION @schema@._around(p_id bigint, p_with_queues boolean)
RETURNS bigint[] LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN ARRAY(
        SELECT p_id
        UNION SELECT unnest(l.limit_ids) FROM @schema@.holdings h
              JOIN @schema@.leases l ON l.id = h.lease_id WHERE h.limit_id = p_id
        UNION SELECT q2.limit_id FROM @schema@.queue q
              JOIN @schema@.queue q2 ON q2.ticket_id = q.ticket_id
              WHERE p_with_queues AND q.limit_id = p_id);
END $$;
