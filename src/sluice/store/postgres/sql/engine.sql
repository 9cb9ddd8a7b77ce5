-- Engine: the helpers every step function shares (schema @schema@), the PostgreSQL
-- twin of sluice/store/sqlite/engine.py: the same decisions, in the same order.
-- Parameters: none (installed with the step functions). Internal: clients call
-- the step functions (exchange.sql, renew.sql, ...), never these.
--
-- Locking rule, which keeps steps free of deadlocks: a step first locks, with
-- ONE blocking statement, the rows of the limits it works on, in name order
-- (_lock, _lock_names). Any limit it needs later (the other limits of a
-- multi-limit waiter, of an expired lease, of a lapsed grant's ticket) it only
-- tries to lock (_try_lock, SKIP LOCKED): it never waits for a second batch. It
-- changes the holdings and queue of a limit only while holding that limit's row
-- lock, and reads them in a statement that starts after the lock was granted
-- (READ COMMITTED gives each statement a fresh snapshot), so what it reads is
-- current.
--
-- State a step carries from helper to helper is one value of type step_state
-- (migrate_003.sql), taken and returned by the helpers that change it: the
-- limits it holds, those it touched (units or queue changed: the hand-off runs
-- on them) and moved (queue head may have changed), whom to wake, and for an
-- exchange the grants made to its caller and the parts of its answer.

-- The database clock, in seconds since the epoch.
CREATE OR REPLACE FUNCTION @schema@._now() RETURNS double precision
LANGUAGE sql VOLATILE AS $$
    SELECT extract(epoch FROM clock_timestamp())::double precision
$$;

-- Seconds a grant handed to another process's ticket waits to be claimed
-- (sluice.store.base.CLAIM_WINDOW).
CREATE OR REPLACE FUNCTION @schema@._claim_window() RETURNS double precision
LANGUAGE sql IMMUTABLE AS $$
    SELECT 2.0::double precision
$$;

-- (Helpers are PL/pgSQL, not SQL functions: PL/pgSQL keeps its query plans for
-- the session, where an SQL function is planned again on every call. The SQL ones
-- are single expressions that PostgreSQL inlines into their callers' expressions,
-- which it does only if they are not STRICT and call nothing more volatile than they
-- are declared: _granted is STABLE because jsonb_build_object and to_jsonb are.)

-- A fresh state for a step of process p_me (p_caller: the same in an exchange, else NULL).
CREATE OR REPLACE FUNCTION @schema@._state(
    p_me text, p_caller text, p_locked bigint[], p_now double precision
) RETURNS @schema@.step_state LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN ROW(p_me, p_caller, '', 0, NULL, false, '{}', '[]', p_now, coalesce(p_locked, '{}'),
               '{}', '{}', '{}', '{}', '[]', '{}', '{}', '{}', '{}', '{}')::@schema@.step_state;
END $$;

-- Lock limit rows by id, in name order (the step's one blocking lock); returns their ids.
CREATE OR REPLACE FUNCTION @schema@._lock(p_ids bigint[]) RETURNS bigint[]
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN ARRAY(SELECT id FROM @schema@.limits WHERE id = ANY(p_ids) ORDER BY name FOR UPDATE);
END $$;

-- Lock limit rows by id or name, in name order (the step's one blocking lock);
-- returns their ids.
CREATE OR REPLACE FUNCTION @schema@._lock_limits(p_ids bigint[], p_names text[])
RETURNS bigint[] LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF cardinality(p_names) = 0 THEN
        RETURN ARRAY(SELECT id FROM @schema@.limits WHERE id = ANY(p_ids) ORDER BY name
                     FOR UPDATE);
    ELSIF cardinality(p_ids) = 0 THEN
        RETURN ARRAY(SELECT id FROM @schema@.limits WHERE name = ANY(p_names) ORDER BY name
                     FOR UPDATE);
    END IF;
    RETURN ARRAY(SELECT id FROM @schema@.limits
                 WHERE id IN (SELECT unnest(p_ids) UNION SELECT l.id FROM @schema@.limits l
                              WHERE l.name = ANY(p_names))
                 ORDER BY name FOR UPDATE);
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
-- its queue head's seq (stalled tickets passed by) and its units in use.
CREATE OR REPLACE FUNCTION @schema@._rows(p_ids bigint[]) RETURNS @schema@.limit_row[]
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN ARRAY(
        SELECT ROW(l.id, l.name, l.slots, l.rate, l.burst, l.active, l.lease_ttl, l.tat,
                   (SELECT min(q.seq) FROM @schema@.queue q
                    WHERE q.limit_id = l.id AND NOT q.stalled),
                   l.in_use)::@schema@.limit_row
        FROM @schema@.limits l WHERE l.id = ANY(p_ids) ORDER BY l.name);
END $$;

-- The limits a ticket waits on, as _rows gives them.
CREATE OR REPLACE FUNCTION @schema@._ticket_rows(p_ticket_id text)
RETURNS @schema@.limit_row[] LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN ARRAY(
        SELECT ROW(l.id, l.name, l.slots, l.rate, l.burst, l.active, l.lease_ttl, l.tat,
                   (SELECT min(h.seq) FROM @schema@.queue h
                    WHERE h.limit_id = l.id AND NOT h.stalled),
                   l.in_use)::@schema@.limit_row
        FROM @schema@.queue q JOIN @schema@.limits l ON l.id = q.limit_id
        WHERE q.ticket_id = p_ticket_id ORDER BY l.name);
END $$;

-- A JSON array of strings as text[] (without a query for none or one).
CREATE OR REPLACE FUNCTION @schema@._texts(p_array jsonb) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    CASE jsonb_array_length(p_array)
        WHEN 0 THEN RETURN '{}';
        WHEN 1 THEN RETURN ARRAY[p_array->>0];
        ELSE RETURN ARRAY(SELECT jsonb_array_elements_text(p_array));
    END CASE;
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

-- Why no amount of waiting can serve this request on these limits as they are
-- now, as the client's InvalidRequest says it ({error: 'invalid', rule, name,
-- ...}); NULL if it can be served some day.
CREATE OR REPLACE FUNCTION @schema@._check(
    p_kind text, p_occupy integer, p_active @schema@.limit_row[]
) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_row @schema@.limit_row;
    v_bound integer;
BEGIN
    FOREACH v_row IN ARRAY p_active LOOP
        IF p_kind = 'rate' AND v_row.rate IS NULL THEN
            RETURN jsonb_build_object('error', 'invalid', 'rule', 'no_rate', 'name', v_row.name);
        END IF;
        v_bound := @schema@._max_occupy(v_row, p_kind);
        IF v_bound IS NOT NULL AND p_occupy > v_bound THEN
            RETURN jsonb_build_object(
                'error', 'invalid', 'rule', 'occupy', 'name', v_row.name, 'occupy', p_occupy,
                'bound', v_bound,
                'what', CASE WHEN v_bound = v_row.slots THEN 'slots' ELSE 'burst' END);
        END IF;
    END LOOP;
    RETURN NULL;
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
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_wait IS NULL THEN NULL
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

-- A Granted, as the client parses it.
CREATE OR REPLACE FUNCTION @schema@._granted(
    p_lease_id text, p_names text[], p_acquired_at double precision,
    p_expires_at double precision, p_lease_ttl double precision, p_missing text[],
    p_ticket_id text
) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'lease_id', p_lease_id, 'names', to_jsonb(p_names), 'acquired_at', p_acquired_at,
        'expires_at', p_expires_at, 'lease_ttl', p_lease_ttl, 'missing', to_jsonb(p_missing),
        'ticket_id', p_ticket_id)
$$;

-- ------------------------------------------------------------------ arrivals

-- When a ticket's wanted grants arrived, oldest first, as parallel arrays of
-- times and counts (the row's empty arrays: all of them at created_at).
CREATE OR REPLACE FUNCTION @schema@._arrivals(
    p_ticket @schema@.tickets, OUT at double precision[], OUT n integer[]
) LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF cardinality(p_ticket.arrival_at) > 0 THEN
        at := p_ticket.arrival_at;
        n := p_ticket.arrival_n;
    ELSIF p_ticket.wanted > 0 THEN
        at := ARRAY[p_ticket.created_at];
        n := ARRAY[p_ticket.wanted];
    ELSE
        at := '{}';
        n := '{}';
    END IF;
END $$;

-- Those segments less p_count grants taken from the oldest.
CREATE OR REPLACE FUNCTION @schema@._take_arrivals(
    p_at double precision[], p_n integer[], p_count integer,
    OUT at double precision[], OUT n integer[]
) LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_left integer := p_count;
    v_used integer;
BEGIN
    at := '{}';
    n := '{}';
    FOR i IN 1 .. coalesce(cardinality(p_at), 0) LOOP
        v_used := least(p_n[i], v_left);
        v_left := v_left - v_used;
        IF p_n[i] - v_used > 0 THEN
            at := at || p_at[i];
            n := n || (p_n[i] - v_used);
        END IF;
    END LOOP;
END $$;

-- ------------------------------------------------------------------ granting

-- Take a grant's tokens and units on every active limit, count it in their
-- totals, and record its lease, named <p_ticket_id>.<fence>. p_claimed: the
-- grant goes to the step's caller, whose it is at once (a rate grant then
-- leaves nothing behind; its lease remembers p_step); otherwise its lease
-- waits to be claimed and lapses after _claim_window(). p_queued_since: when
-- the granted request arrived, if it queued (its wait goes into the totals'
-- histogram of queued waits), else NULL. p_last: the grant is the last one its
-- ticket wants, and the ticket leaves its queues in the same statement. Returns a
-- Granted.
CREATE OR REPLACE FUNCTION @schema@._grant(
    p_ticket_id text, p_ticket_seq bigint, p_process_id text, p_holder text, p_host text,
    p_pid integer, p_occupy integer, p_kind text, p_active @schema@.limit_row[],
    p_missing text[], p_claimed boolean, p_step bigint, p_now double precision,
    p_queued_since double precision, p_last boolean DEFAULT false
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_row @schema@.limit_row;
    v_names text[] := '{}';
    v_ttl double precision := 30.0;   -- DEFAULT_LEASE_TTL when no limit is active
    v_ids bigint[] := '{}';
    v_tats double precision[] := '{}';
    v_units integer[] := '{}';
    v_hold bigint[] := '{}';
    v_lease_id text;
    v_expires double precision;
    v_tat double precision;
    v_wait double precision := CASE WHEN p_queued_since IS NOT NULL
                                    THEN greatest(p_now - p_queued_since, 0) END;
    v_bucket integer := coalesce(@schema@._wait_bucket(v_wait), 1);
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
        v_ids := v_ids || v_row.id;
        v_tats := v_tats || v_tat;
        IF p_kind = 'concurrency' AND v_row.slots IS NOT NULL THEN
            v_units := v_units || p_occupy;
            v_hold := v_hold || v_row.id;
        ELSE
            v_units := v_units || 0;
        END IF;
    END LOOP;
    IF NOT (p_kind = 'rate' AND p_claimed) THEN  -- (such a grant leaves nothing behind)
        v_lease_id := p_ticket_id || '.' || nextval('@schema@.fence');
        v_expires := p_now + CASE WHEN p_claimed THEN v_ttl
                                  ELSE least(v_ttl, @schema@._claim_window()) END;
    END IF;
    -- One statement: the limits' tokens, units and totals (a wait, if it queued, in
    -- its bucket: nothing changes there otherwise), the lease, its holdings, and
    -- (p_last) the ticket gone from its queues.
    WITH counted AS (
        UPDATE @schema@.limits l
        SET tat = x.tat, in_use = l.in_use + x.units, grants = l.grants + 1,
            granted_units = l.granted_units + p_occupy,
            wait_seconds = l.wait_seconds + coalesce(v_wait, 0),
            queued_waits[v_bucket] = coalesce(l.queued_waits[v_bucket], 0)
                                     + CASE WHEN v_wait IS NULL THEN 0 ELSE 1 END
        FROM unnest(v_ids, v_tats, v_units) AS x(id, tat, units)
        WHERE l.id = ANY(v_ids) AND l.id = x.id
    ), lease AS (
        INSERT INTO @schema@.leases (id, limit_ids, names, kind, process_id, holder, host,
                                     pid, occupy, lease_ttl, acquired_at, expires_at,
                                     ticket_id, ticket_seq, claimed, step)
        SELECT v_lease_id, v_hold, v_names, p_kind, p_process_id, p_holder, p_host, p_pid,
               p_occupy, v_ttl, p_now, v_expires, p_ticket_id, p_ticket_seq, p_claimed,
               CASE WHEN p_claimed THEN p_step END
        WHERE v_lease_id IS NOT NULL
    ), served AS (
        DELETE FROM @schema@.tickets WHERE p_last AND id = p_ticket_id
    ), unqueued AS (
        DELETE FROM @schema@.queue WHERE p_last AND ticket_id = p_ticket_id
    )
    INSERT INTO @schema@.holdings (limit_id, lease_id, units)
    SELECT unnest(v_hold), v_lease_id, p_occupy WHERE v_lease_id IS NOT NULL;
    IF p_kind = 'rate' THEN
        RETURN @schema@._granted(NULL, v_names, p_now, NULL, NULL, p_missing, p_ticket_id);
    END IF;
    RETURN @schema@._granted(v_lease_id, v_names, p_now, v_expires, v_ttl, p_missing,
                             p_ticket_id);
END $$;

-- One grant of a ticket's request, counted from the arrival of its oldest wanted
-- grant; the ticket wants one fewer (and leaves its queues at none). A grant to
-- the step's caller (p_claimed) joins its grants; any other wakes the ticket's
-- process, to claim it.
CREATE OR REPLACE FUNCTION @schema@._grant_to_ticket(
    s @schema@.step_state, p_ticket @schema@.tickets, p_active @schema@.limit_row[],
    p_claimed boolean
) RETURNS @schema@.step_state LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_arrivals record;
    v_left record;
    v_granted jsonb;
    v_ids bigint[];
BEGIN
    v_arrivals := @schema@._arrivals(p_ticket);
    v_granted := @schema@._grant(
        p_ticket.id, p_ticket.seq, p_ticket.process_id, p_ticket.holder, p_ticket.host,
        p_ticket.pid, p_ticket.occupy, p_ticket.kind, p_active, '{}', p_claimed, s.step, s.now,
        coalesce(v_arrivals.at[1], p_ticket.created_at), p_ticket.wanted <= 1);
    IF p_ticket.wanted <= 1 THEN  -- it left its queues (_grant): those it was granted on moved
        v_ids := @schema@._ids(p_active);
        s.touched := s.touched || v_ids;
        s.moved := s.moved || v_ids;
    ELSE
        v_left := @schema@._take_arrivals(v_arrivals.at, v_arrivals.n, 1);
        UPDATE @schema@.tickets
        SET wanted = wanted - 1, arrival_at = v_left.at, arrival_n = v_left.n
        WHERE id = p_ticket.id;
    END IF;
    IF p_claimed THEN
        s.mine := s.mine || jsonb_build_array(v_granted);
    ELSE
        s := @schema@._wake(s, p_ticket.id, p_ticket.process_id);
    END IF;
    RETURN s;
END $$;

-- Wake a ticket's process when the step commits.
CREATE OR REPLACE FUNCTION @schema@._wake(
    s @schema@.step_state, p_ticket_id text, p_process_id text
) RETURNS @schema@.step_state LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    s.wake_t := s.wake_t || p_ticket_id;
    s.wake_p := s.wake_p || p_process_id;
    RETURN s;
END $$;

-- ------------------------------------------------------------------ queueing

-- Queue a ticket wanting p_wanted grants of a request on every active limit; its
-- seq is p_seq (the place it had) if given and free, else the next in arrival
-- order. The caller marks those limits moved. Returns the seq.
CREATE OR REPLACE FUNCTION @schema@._open_ticket(
    p_id text, p_names text[], p_occupy integer, p_kind text, p_holder text,
    p_process_id text, p_host text, p_pid integer, p_active @schema@.limit_row[],
    p_wanted integer, p_seq bigint, p_stalled boolean, p_step bigint, p_now double precision
) RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_row @schema@.limit_row;
    v_ids bigint[] := '{}';
    v_ttl double precision;
    v_seq bigint := p_seq;
BEGIN
    FOREACH v_row IN ARRAY p_active LOOP
        v_ids := v_ids || v_row.id;
        v_ttl := least(v_ttl, v_row.lease_ttl);
    END LOOP;
    v_ttl := coalesce(v_ttl, 30.0);
    IF v_seq IS NULL THEN
        v_seq := nextval('@schema@.ticket_seq');
    ELSIF EXISTS (SELECT 1 FROM @schema@.tickets WHERE seq = v_seq) THEN
        v_seq := nextval('@schema@.ticket_seq');
    END IF;
    WITH ticket AS (
        INSERT INTO @schema@.tickets (seq, id, process_id, holder, host, pid, occupy, kind,
                                      names, limit_count, lease_ttl, created_at, expires_at,
                                      wanted, step)
        VALUES (v_seq, p_id, p_process_id, p_holder, p_host, p_pid, p_occupy, p_kind, p_names,
                cardinality(v_ids), v_ttl, p_now, p_now + v_ttl, p_wanted, p_step)
    )
    INSERT INTO @schema@.queue (limit_id, seq, ticket_id, occupy, kind, stalled)
    SELECT unnest(v_ids), v_seq, p_id, p_occupy, p_kind, p_stalled;
    RETURN v_seq;
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
    v_found boolean;
    v_ids bigint[];
BEGIN
    WITH ticket AS (
        DELETE FROM @schema@.tickets
        WHERE id = p_ticket_id AND (p_expired_at IS NULL OR expires_at <= p_expired_at)
        RETURNING id
    ), queued AS (
        DELETE FROM @schema@.queue
        WHERE ticket_id = p_ticket_id AND (p_expired_at IS NULL OR EXISTS (SELECT FROM ticket))
        RETURNING limit_id
    )
    SELECT EXISTS (SELECT FROM ticket), ARRAY(SELECT limit_id FROM queued) INTO v_found, v_ids;
    v_ids := coalesce(p_limit_ids, v_ids);
    IF NOT v_found AND (p_expired_at IS NOT NULL OR cardinality(v_ids) = 0) THEN
        RETURN NULL;
    END IF;
    RETURN v_ids;
END $$;

-- _drop_ticket within a step: its queues are touched and moved. p_expired: only
-- if it is still expired now (a renewal that committed meanwhile wins).
CREATE OR REPLACE FUNCTION @schema@._drop(
    s @schema@.step_state, p_ticket_id text, p_expired boolean DEFAULT false
) RETURNS @schema@.step_state LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_ids bigint[] := @schema@._drop_ticket(p_ticket_id, NULL,
                                            CASE WHEN p_expired THEN s.now END);
BEGIN
    IF v_ids IS NOT NULL THEN
        s.touched := s.touched || v_ids;
        s.moved := s.moved || v_ids;
    END IF;
    RETURN s;
END $$;

-- ------------------------------------------------------------------ giving back

-- Delete leases and every unit they hold; their limits are touched. p_expired:
-- they are taken back because they expired, and only those still expired now
-- go (a renewal that committed while this step waited wins). Of those, a
-- claimed one counts in its limits' totals as reclaimed; an unclaimed one (a
-- hand-off nobody collected) gives its grant back to its ticket (_lapse).
-- Without p_expired (a release by withdrawal, reset, a forced delete, a
-- process's exit) nothing is counted and nothing lapses.
CREATE OR REPLACE FUNCTION @schema@._revoke(
    s @schema@.step_state, p_lease_ids text[], p_expired boolean
) RETURNS @schema@.step_state LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_touched bigint[];
    v_lapsed @schema@.leases[];
    v_lease @schema@.leases;
BEGIN
    IF cardinality(p_lease_ids) = 0 THEN
        RETURN s;
    END IF;
    WITH gone AS (
        DELETE FROM @schema@.leases
        WHERE id = ANY(p_lease_ids) AND (NOT p_expired OR expires_at <= s.now)
        RETURNING *
    ), units AS (
        DELETE FROM @schema@.holdings h USING gone g
        WHERE h.lease_id = g.id AND h.limit_id = ANY(g.limit_ids)
        RETURNING h.limit_id, h.units, g.claimed, g.holder, g.acquired_at, g.id
    ), recorded AS (  -- who held the units, and when (`run why`)
        INSERT INTO @schema@.held (limit_id, holder, units, acquired_at, released_at, lease_id)
        SELECT u.limit_id, u.holder, u.units, u.acquired_at, s.now, u.id
        FROM units u WHERE u.claimed
    ), counted AS (
        UPDATE @schema@.limits l
        SET in_use = l.in_use - u.units, reclaimed = l.reclaimed + u.reclaimed
        FROM (SELECT limit_id, sum(units) AS units,
                     count(*) FILTER (WHERE p_expired AND claimed) AS reclaimed
              FROM units GROUP BY limit_id) u
        WHERE l.id = ANY((SELECT array_agg(limit_id) FROM units)::bigint[]) AND l.id = u.limit_id
    )
    SELECT ARRAY(SELECT DISTINCT unnest(g.limit_ids) FROM gone g),
           ARRAY(SELECT ROW(g.*)::@schema@.leases FROM gone g
                 WHERE p_expired AND NOT g.claimed AND g.ticket_id <> ''
                 ORDER BY g.acquired_at, length(g.id), g.id)
    INTO v_touched, v_lapsed;
    s.touched := s.touched || v_touched;
    FOREACH v_lease IN ARRAY v_lapsed LOOP
        s := @schema@._lapse(s, v_lease);
    END LOOP;
    RETURN s;
END $$;

-- A grant handed to a ticket lapsed unclaimed: the ticket gets it back (wanting
-- one more, counted from the hand-off), keeping its place, stalled (passed by)
-- until its process asks about it again; a ticket that is gone meanwhile is
-- opened again at the lease's ticket_seq, stalled, wanting one, if its limits
-- can be locked now (else its process's ask opens it again). Its process is woken.
-- Processes on other hosts cannot be seen to die: a ticket opened again lives at
-- most as long as the one handed the grant could have unrenewed (one lease TTL
-- from the hand-off), and not at all past that; a live process renews it.
CREATE OR REPLACE FUNCTION @schema@._lapse(s @schema@.step_state, p_lease @schema@.leases)
RETURNS @schema@.step_state LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_ticket @schema@.tickets;
    v_arrivals record;
    v_ids bigint[];
    v_try bigint[];
    v_active @schema@.limit_row[];
BEGIN
    SELECT * INTO v_ticket FROM @schema@.tickets WHERE id = p_lease.ticket_id;
    IF FOUND THEN
        v_arrivals := @schema@._arrivals(v_ticket);
        UPDATE @schema@.tickets
        SET wanted = wanted + 1, arrival_at = p_lease.acquired_at || v_arrivals.at,
            arrival_n = 1 || v_arrivals.n
        WHERE id = v_ticket.id;
        UPDATE @schema@.queue SET stalled = true WHERE ticket_id = v_ticket.id;
    ELSIF p_lease.ticket_seq IS NOT NULL AND p_lease.acquired_at + p_lease.lease_ttl > s.now THEN
        v_ids := ARRAY(SELECT id FROM @schema@.limits WHERE name = ANY(p_lease.names));
        v_try := @schema@._try_lock(s.locked, v_ids);
        IF v_try IS NOT NULL THEN
            s.locked := v_try;
            v_active := @schema@._active(@schema@._rows(v_ids));
            IF cardinality(v_active) > 0 THEN
                PERFORM @schema@._open_ticket(
                    p_lease.ticket_id, p_lease.names, p_lease.occupy, p_lease.kind,
                    p_lease.holder, p_lease.process_id, p_lease.host, p_lease.pid, v_active, 1,
                    p_lease.ticket_seq, true, NULL, s.now);
                UPDATE @schema@.tickets SET expires_at = p_lease.acquired_at + p_lease.lease_ttl
                WHERE id = p_lease.ticket_id;
                s.moved := s.moved || @schema@._ids(v_active);
            END IF;
        END IF;
    END IF;
    RETURN @schema@._wake(s, p_lease.ticket_id, p_lease.process_id);
END $$;

-- Remove expired leases and tickets in the way on these limits. One whose other
-- limits (or, for an unclaimed grant, its ticket's) another step holds right
-- now is left for later: it still blocks, and its past expiry makes the blocked
-- request look again at once. Whatever went is touched (and moved).
CREATE OR REPLACE FUNCTION @schema@._reclaim(s @schema@.step_state, p_limit_ids bigint[])
RETURNS @schema@.step_state LANGUAGE plpgsql VOLATILE
-- Plain index scans: they skip (and mark) index entries of rows deleted long ago.
SET enable_bitmapscan = off SET enable_seqscan = off AS $$
DECLARE
    v_item record;
    v_want bigint[];
    v_try bigint[];
BEGIN
    FOR v_item IN
        SELECT l.id, l.limit_ids, l.claimed, l.ticket_id, l.names
        FROM @schema@.leases l
        WHERE l.id = ANY(ARRAY(SELECT DISTINCT h.lease_id FROM @schema@.holdings h
                               WHERE h.limit_id = ANY(p_limit_ids)))
          AND l.expires_at <= s.now
    LOOP
        v_want := v_item.limit_ids;
        IF NOT v_item.claimed AND v_item.ticket_id <> '' THEN  -- it lapses to its ticket
            v_want := v_want
                || ARRAY(SELECT limit_id FROM @schema@.queue WHERE ticket_id = v_item.ticket_id)
                || ARRAY(SELECT id FROM @schema@.limits WHERE name = ANY(v_item.names));
        END IF;
        v_try := @schema@._try_lock(s.locked, v_want);
        CONTINUE WHEN v_try IS NULL;
        s.locked := v_try;
        s := @schema@._revoke(s, ARRAY[v_item.id], true);
    END LOOP;
    FOR v_item IN
        SELECT t.id FROM @schema@.tickets t
        WHERE t.id = ANY(ARRAY(SELECT DISTINCT q.ticket_id FROM @schema@.queue q
                               WHERE q.limit_id = ANY(p_limit_ids)))
          AND t.expires_at <= s.now
    LOOP
        v_try := @schema@._try_lock(s.locked, ARRAY(
            SELECT limit_id FROM @schema@.queue WHERE ticket_id = v_item.id));
        CONTINUE WHEN v_try IS NULL;
        s.locked := v_try;
        s := @schema@._drop(s, v_item.id, true);
    END LOOP;
    RETURN s;
END $$;

-- ------------------------------------------------------------------ hand-off

-- Grant waiting tickets that fit now, in arrival order; whom to wake goes into
-- the state.
--
-- Runs after every change of a limit's units or queue (the state's touched and
-- moved, which it empties). On each such limit, the head ticket (stalled ones
-- passed by) is granted if it can be on every limit it waits for (it heads
-- each of those queues too, and units and tokens suffice), as many times as it
-- wants and fits; then the next, and so on, stopping at the first that cannot
-- be served: strict FIFO, with no capacity left idle while the head could use
-- it. Grants made in one pass change limits again (a served ticket leaves its
-- queues): passes run until nothing changed. A grant to the step's caller is
-- its at once (claimed, in the state's grants); other tickets are woken to
-- claim theirs; a head left waiting is woken when it changed, to learn when
-- its next rate token is due. A head whose other limits another step holds
-- right now is woken instead: its own ask takes every lock it needs in order.
-- An expired head ticket (its process died or hung) is dropped, never served.
CREATE OR REPLACE FUNCTION @schema@._hand_off(s @schema@.step_state)
RETURNS @schema@.step_state LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_work bigint[];
    v_moved bigint[];
BEGIN
    WHILE cardinality(s.touched) + cardinality(s.moved) > 0 LOOP
        v_moved := s.moved;
        v_work := s.touched || s.moved;
        IF v_work[1] = ALL(v_work) THEN  -- one limit (the common case: no query)
            v_work := v_work[1:1];
        ELSE
            v_work := ARRAY(SELECT DISTINCT unnest(v_work) ORDER BY 1);
        END IF;
        s.touched := '{}';
        s.moved := '{}';
        s := @schema@._hand_off_pass(s, v_work, v_moved);
    END LOOP;
    RETURN s;
END $$;

-- One pass of _hand_off over the limits p_work (p_moved: those whose head may
-- have changed). A ticket served to the end leaves its queues, which changes them
-- again; this pass looks at each of them again, now as moved (the limit it was
-- served on, at once; the others later), so that alone calls for no other pass.
CREATE OR REPLACE FUNCTION @schema@._hand_off_pass(
    s @schema@.step_state, p_work bigint[], p_moved bigint[]
) RETURNS @schema@.step_state LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_work bigint[] := p_work;
    v_moved bigint[] := p_moved;
    v_touched integer;
    v_moves integer;
    v_done bigint[] := '{}';
    v_limit bigint;
    v_granted_here boolean;
    v_head record;
    v_ticket @schema@.tickets;
    v_lim @schema@.limits;
    v_here @schema@.limit_row;
    v_rows @schema@.limit_row[];
    v_active @schema@.limit_row[];
    v_why text[];
    v_ids bigint[];
    v_try bigint[];
    v_others bigint[];
BEGIN
    WHILE cardinality(v_work) > 0 LOOP
        v_limit := v_work[1];
        v_work := v_work[2:];
        CONTINUE WHEN v_limit = ANY(v_done);
        v_done := v_done || v_limit;
        v_granted_here := false;
        LOOP
            SELECT t AS t, l AS l INTO v_head
            FROM @schema@.queue q JOIN @schema@.tickets t ON t.id = q.ticket_id
            JOIN @schema@.limits l ON l.id = q.limit_id
            WHERE q.limit_id = v_limit AND NOT q.stalled ORDER BY q.seq LIMIT 1;
            EXIT WHEN NOT FOUND;
            v_ticket := v_head.t;
            v_lim := v_head.l;
            -- This limit, whose queue the ticket heads.
            v_here := ROW(v_lim.id, v_lim.name, v_lim.slots, v_lim.rate, v_lim.burst,
                          v_lim.active, v_lim.lease_ttl, v_lim.tat, v_ticket.seq,
                          v_lim.in_use)::@schema@.limit_row;
            IF v_lim.active AND v_ticket.kind = 'concurrency' AND v_lim.slots IS NOT NULL
                    AND v_lim.in_use + v_ticket.occupy > v_lim.slots THEN
                IF v_limit = ANY(v_moved) AND v_ticket.occupy > v_lim.slots THEN
                    s := @schema@._wake(s, v_ticket.id, v_ticket.process_id);  -- slots now below it
                END IF;
                EXIT;  -- no room on this limit: the common case, decided in one query
            END IF;
            -- A ticket in one queue needs nothing more; one in several, all of them.
            IF v_ticket.limit_count = 1 THEN
                v_rows := ARRAY[v_here];
                v_ids := ARRAY[v_limit];
            ELSE
                v_ids := ARRAY(SELECT limit_id FROM @schema@.queue WHERE ticket_id = v_ticket.id);
                v_try := @schema@._try_lock(s.locked, v_ids);
                IF v_try IS NULL THEN
                    s := @schema@._wake(s, v_ticket.id, v_ticket.process_id);
                    EXIT;
                END IF;
                s.locked := v_try;
                v_rows := @schema@._rows(v_ids);
                v_ids := @schema@._ids(v_rows);
            END IF;
            IF v_ticket.expires_at <= s.now THEN
                -- Its process died or hung past the TTL: drop it, never hand it units.
                v_ids := @schema@._drop_ticket(v_ticket.id, v_ids, s.now);
                EXIT WHEN v_ids IS NULL;  -- renewed meanwhile: it is served on its next turn
                s.touched := s.touched || v_ids;
                s.moved := s.moved || v_ids;
                CONTINUE;
            END IF;
            v_active := @schema@._active(v_rows);
            IF @schema@._check(v_ticket.kind, v_ticket.occupy, v_active) IS NOT NULL THEN
                s := @schema@._wake(s, v_ticket.id, v_ticket.process_id);  -- its ask says why
                EXIT;
            END IF;
            v_why := @schema@._blockers(v_ticket.kind, v_ticket.occupy, v_active, v_ticket.seq,
                                        s.now);
            IF @schema@._any(v_why) THEN
                -- A new head waiting for a rate token must learn when it is due; one
                -- waiting for units is served here when they free up.
                IF (v_granted_here OR v_limit = ANY(v_moved)) AND 'rate' = ANY(v_why) THEN
                    s := @schema@._wake(s, v_ticket.id, v_ticket.process_id);
                END IF;
                EXIT;
            END IF;
            v_touched := cardinality(s.touched);
            v_moves := cardinality(s.moved);
            s := @schema@._grant_to_ticket(s, v_ticket, v_active,
                                           coalesce(v_ticket.process_id = s.caller, false));
            v_granted_here := true;
            IF v_ticket.wanted <= 1 THEN  -- it left its queues: each is looked at again below
                v_moved := v_moved || s.moved[v_moves + 1:];
                s.touched := s.touched[1:v_touched];
                s.moved := s.moved[1:v_moves];
            END IF;
            IF cardinality(v_ids) > 1 THEN  -- its other queues moved too
                v_others := ARRAY(SELECT unnest(v_ids) EXCEPT SELECT v_limit);
                v_work := v_work || v_others;
                v_done := ARRAY(SELECT unnest(v_done) EXCEPT SELECT unnest(v_others));
            END IF;
        END LOOP;
    END LOOP;
    RETURN s;
END $$;

-- Send the state's wake-ups: pg_notify on channel 'sluice_<process id>' with
-- payload {"w": [ticket ids]} (chunks of 100 ids, well under the 8000-byte
-- limit), delivered when the step commits; the woken process asks about its
-- tickets (which claims what was handed to them). Returns the ticket ids of the
-- step's own process (s.me), which it wakes itself.
CREATE OR REPLACE FUNCTION @schema@._notify(s @schema@.step_state) RETURNS text[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_target record;
BEGIN
    IF cardinality(s.wake_t) = 0 THEN
        RETURN '{}';
    END IF;
    FOR v_target IN
        SELECT w.p, array_agg(DISTINCT w.t) AS tickets
        FROM unnest(s.wake_p, s.wake_t) AS w(p, t)
        WHERE w.p IS DISTINCT FROM s.me GROUP BY w.p
    LOOP
        FOR v_chunk IN 0 .. (cardinality(v_target.tickets) - 1) / 100 LOOP
            PERFORM pg_notify('sluice_' || v_target.p, jsonb_build_object(
                'w', to_jsonb(v_target.tickets[v_chunk * 100 + 1 : v_chunk * 100 + 100]))::text);
        END LOOP;
    END LOOP;
    RETURN ARRAY(SELECT DISTINCT w.t FROM unnest(s.wake_p, s.wake_t) AS w(p, t)
                 WHERE w.p = s.me);
END $$;

-- ------------------------------------------------------------------ admin helpers

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
