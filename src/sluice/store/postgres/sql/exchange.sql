-- Step: exchange — everything one process has for the store at one moment, as ONE
-- transaction (sluice.store.base.Exchange), the twin of sluice/store/sqlite/exchange.py:
-- withdrawals, releases, the hand-off of what they freed, asks, requests, a last
-- hand-off, then where each ticket of the caller asked about or opened stands.
-- Parameters:
--   p_batch  jsonb  {process, host, pid: the calling process (its wake-up channel is
--                      sluice_<process>);
--                    step: the exchange's number in its process; resend: true when the
--                      same batch may have committed already (its reply was lost);
--                    releases: [lease id];
--                    withdrawals: [{ticket, count (null: all), timed_out_on (a limit
--                      name, or null)}];
--                    asks: [{ticket, seq, count, request}];
--                    requests: [request]}
--                   where a request is {id, names (sorted, distinct), occupy, kind
--                   ('concurrency' | 'rate'), holder, missing ('raise' | 'warn' |
--                   'ignore'), count, join (a ticket id, or null)}
-- Returns: jsonb {released: {lease id: whether it was still held},
--   grants: [{lease_id (null for a rate grant), names, acquired_at, expires_at,
--             lease_ttl, missing, ticket_id}] (every grant made to the caller, claimed),
--   queued: {ticket id: {request_id, seq, blocked_on, position, retry_in, lease_ttl,
--            missing, wanted}} (computed after the last hand-off),
--   refused: {request or ticket id: {error: 'not_found', names} | {error: 'invalid',
--             rule: 'no_rate' | 'occupy', name, occupy, bound, what}},
--   joined: {request id: ticket id}, missing: {request id: [names skipped]},
--   wake: [ticket ids of the caller to wake]}.
-- Errors: none for a request or ask the store refuses: it is answered in refused,
--   nothing changed for it, and the rest of the step happens (every request is
--   validated before anything is written for it). 40001 if a ticket's queues grew
--   while the step waited for its locks (the client runs it again).
-- Resends: with resend, every lease the lost attempt made the caller's (granted to
--   it, or claimed by its ask: leases.step) is answered again as a grant, and nothing
--   is done twice: a request whose id already has a ticket or leases answers with
--   what exists (its grants, where its ticket stands); one whose join ticket the lost
--   attempt changed (tickets.step) joined it; a withdrawal from a ticket it changed is
--   done; a release of a lease that is gone was done (released: true); an ask counts
--   what it claimed. (A rate grant leaves nothing behind: one made by the lost
--   attempt is not found, so a resend may spend one more token, never more units.
--   Wake-ups of the caller's own tickets that only the lost reply carried are not
--   repeated: those tickets look again when their timers say.)
-- Locks: the limits of the leases released, of the tickets withdrawn or asked about
--   (their queues and their unclaimed grants), and every limit named by a request,
--   an ask or a timeout, with ONE blocking statement in name order; any other limit
--   (a multi-limit waiter's, an expired lease's) only with SKIP LOCKED.
CREATE OR REPLACE FUNCTION @schema@.exchange(p_batch jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
-- Every statement of the step (its helpers' too) on a generic plan, made once per
-- session: custom plans, chosen for most statements (their array parameters make the
-- generic plan look dearer), were planned again at every step. Such a plan must suit
-- tables of any size, whatever their size when it was made: index lookups and
-- nested loops only, driven by what the step names (a lease, a ticket, a limit's
-- queue). Plain index scans also skip, and mark, the index entries of rows deleted
-- long ago, which busy queues and leases leave many of.
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off
SET enable_hashjoin = off SET enable_mergejoin = off
AS $$
DECLARE
    s @schema@.step_state;
    v_withdrawals jsonb := p_batch->'withdrawals';
    v_asks jsonb := p_batch->'asks';
    v_requests jsonb := p_batch->'requests';
    v_releases text[] := CASE WHEN p_batch->'releases' = '[]' THEN '{}'
                              ELSE @schema@._texts(p_batch->'releases') END;
    v_tickets text[] := '{}';
    v_names text[] := '{}';
    v_lease text;
    v_waiting record;
    v_report jsonb;
    v_queued jsonb := '{}';
BEGIN
    IF jsonb_array_length(v_withdrawals) + jsonb_array_length(v_asks) > 0 THEN
        v_tickets := ARRAY(
            SELECT x->>'ticket' FROM jsonb_array_elements(v_withdrawals) x
            UNION SELECT x->>'ticket' FROM jsonb_array_elements(v_asks) x);
        v_names := ARRAY(
            SELECT jsonb_array_elements_text(x->'request'->'names')
            FROM jsonb_array_elements(v_asks) x
            UNION SELECT x->>'timed_out_on' FROM jsonb_array_elements(v_withdrawals) x
            WHERE x->>'timed_out_on' IS NOT NULL);
    END IF;
    IF jsonb_array_length(v_requests) = 1 THEN
        v_names := v_names || @schema@._texts(v_requests->0->'names');
    ELSIF jsonb_array_length(v_requests) > 1 THEN
        v_names := v_names || ARRAY(
            SELECT jsonb_array_elements_text(x->'names') FROM jsonb_array_elements(v_requests) x);
    END IF;
    s := @schema@._state(p_batch->>'process', p_batch->>'process',
                         @schema@._lock_step(v_releases, v_tickets, v_names), NULL);
    s.host := p_batch->>'host';
    s.pid := (p_batch->>'pid')::integer;
    s.step := (p_batch->>'step')::bigint;
    s.resend := coalesce((p_batch->>'resend')::boolean, false);
    s.now := @schema@._now();
    IF s.resend THEN  -- what the lost attempt did, first: the tickets it changed, the
        s.stamped := ARRAY(  -- grants it made ours
            SELECT id FROM @schema@.tickets WHERE process_id = s.caller AND step = s.step);
        s.resent := coalesce((
            SELECT jsonb_agg(@schema@._granted(l.id, l.names, l.acquired_at, l.expires_at,
                                               l.lease_ttl, '{}', l.ticket_id)
                             ORDER BY l.acquired_at, length(l.id), l.id)
            FROM @schema@.leases l
            WHERE l.step = s.step AND l.process_id = s.caller AND l.claimed), '[]');
        s.mine := s.resent;
    END IF;
    -- (Loops by position: a loop over a query's rows would be one more statement.)
    FOR i IN 0 .. jsonb_array_length(v_withdrawals) - 1 LOOP
        s := @schema@._withdraw(s, v_withdrawals->i);
    END LOOP;
    FOREACH v_lease IN ARRAY v_releases LOOP
        s := @schema@._release(s, v_lease);
    END LOOP;
    IF cardinality(s.touched) + cardinality(s.moved) > 0 THEN
        s := @schema@._hand_off(s);  -- what was freed goes to those already waiting, first
    END IF;
    FOR i IN 0 .. jsonb_array_length(v_asks) - 1 LOOP
        s := @schema@._ask(s, v_asks->i);
    END LOOP;
    FOR i IN 0 .. jsonb_array_length(v_requests) - 1 LOOP
        s := @schema@._request(s, v_requests->i);
    END LOOP;
    IF cardinality(s.touched) + cardinality(s.moved) > 0 THEN
        s := @schema@._hand_off(s);
    END IF;
    IF s.waiting <> '{}' THEN
        FOR v_waiting IN SELECT key, value #>> '{}' AS request FROM jsonb_each(s.waiting) LOOP
            v_report := @schema@._report(
                s, v_waiting.key, @schema@._texts(coalesce(s.missing->v_waiting.request, '[]')));
            IF v_report IS NOT NULL THEN
                v_queued := v_queued || jsonb_build_object(v_waiting.key, v_report);
            END IF;
        END LOOP;
    END IF;
    RETURN jsonb_build_object(
        'released', s.released, 'grants', s.mine, 'queued', v_queued, 'refused', s.refused,
        'joined', s.joined, 'missing', s.missing,
        'wake', CASE WHEN cardinality(s.wake_t) = 0 THEN '[]'
                     ELSE to_jsonb(@schema@._notify(s)) END);
END $$;

-- Lock the limits an exchange works on (see its Locks) in name order, waiting: the
-- limits of the leases it releases, the queues and unclaimed grants of the tickets it
-- withdraws from or asks about, and the limits it names. A ticket may have joined a
-- queue meanwhile: what the tickets cover is read again once locked, and locked
-- without waiting (40001 if another step holds it: the client runs the step again).
-- Returns the locked ids. (A lease's limits never change, nor does a name's limit
-- while it is locked: a limit created meanwhile is as yet missing to the step.)
CREATE OR REPLACE FUNCTION @schema@._lock_step(
    p_releases text[], p_tickets text[], p_names text[]
) RETURNS bigint[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_locked bigint[];
BEGIN
    IF cardinality(p_tickets) > 0 THEN
        v_locked := @schema@._lock_limits(@schema@._involved(p_releases, p_tickets), p_names);
        v_locked := @schema@._try_lock(v_locked, @schema@._involved('{}', p_tickets));
        IF v_locked IS NULL THEN
            RAISE EXCEPTION 'queues changed; try again' USING ERRCODE = '40001';
        END IF;
        RETURN v_locked;
    ELSIF cardinality(p_releases) = 0 THEN
        RETURN ARRAY(SELECT id FROM @schema@.limits WHERE name = ANY(p_names) ORDER BY name
                     FOR UPDATE);
    ELSIF cardinality(p_names) = 0 THEN
        RETURN ARRAY(SELECT id FROM @schema@.limits
                     WHERE id = ANY(ARRAY(SELECT unnest(limit_ids) FROM @schema@.leases
                                          WHERE id = ANY(p_releases)))
                     ORDER BY name FOR UPDATE);
    END IF;
    RETURN ARRAY(SELECT id FROM @schema@.limits
                 WHERE id = ANY(ARRAY(SELECT unnest(limit_ids) FROM @schema@.leases
                                      WHERE id = ANY(p_releases))
                                || ARRAY(SELECT n.id FROM @schema@.limits n
                                         WHERE n.name = ANY(p_names)))
                 ORDER BY name FOR UPDATE);
END $$;

-- The limits of the leases released and the queues and unclaimed grants of the
-- tickets withdrawn from or asked about.
CREATE OR REPLACE FUNCTION @schema@._involved(p_releases text[], p_tickets text[])
RETURNS bigint[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_ids bigint[] := '{}';
BEGIN
    IF cardinality(p_releases) > 0 THEN
        v_ids := ARRAY(SELECT unnest(limit_ids) FROM @schema@.leases WHERE id = ANY(p_releases));
    END IF;
    IF cardinality(p_tickets) > 0 THEN
        v_ids := v_ids
            || ARRAY(SELECT limit_id FROM @schema@.queue WHERE ticket_id = ANY(p_tickets))
            || ARRAY(SELECT unnest(limit_ids) FROM @schema@.leases
                     WHERE ticket_id = ANY(p_tickets) AND NOT claimed);
    END IF;
    RETURN v_ids;
END $$;

-- ------------------------------------------------------------------ withdrawals and releases

-- Take back wanted grants of one of the caller's tickets; what it no longer wants
-- beyond that comes out of the grants handed to it and not yet claimed (they go
-- back, never used). p_withdrawal: {ticket, count (null: all), timed_out_on}.
CREATE OR REPLACE FUNCTION @schema@._withdraw(s @schema@.step_state, p_withdrawal jsonb)
RETURNS @schema@.step_state LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_id text := p_withdrawal->>'ticket';
    v_count integer := (p_withdrawal->>'count')::integer;
    v_ticket @schema@.tickets;
    v_mine boolean;
    v_take integer;
    v_beyond integer;
    v_arrivals record;
    v_left record;
BEGIN
    SELECT * INTO v_ticket FROM @schema@.tickets WHERE id = v_id;
    v_mine := FOUND AND v_ticket.process_id = s.caller;
    IF v_mine AND v_id = ANY(s.stamped) THEN
        RETURN s;  -- the lost attempt did it
    END IF;
    v_take := CASE WHEN NOT v_mine THEN 0
                   WHEN v_count IS NULL THEN v_ticket.wanted
                   ELSE least(v_count, v_ticket.wanted) END;
    IF v_take > 0 THEN
        IF v_take >= v_ticket.wanted THEN
            s := @schema@._drop(s, v_id);
        ELSE
            v_arrivals := @schema@._arrivals(v_ticket);
            v_left := @schema@._take_arrivals(v_arrivals.at, v_arrivals.n, v_take);
            UPDATE @schema@.tickets
            SET wanted = wanted - v_take, arrival_at = v_left.at, arrival_n = v_left.n,
                step = s.step
            WHERE id = v_id;
        END IF;
    END IF;
    v_beyond := v_count - v_take;  -- NULL: all of them
    IF v_beyond IS NULL OR v_beyond > 0 THEN
        -- Handed over meanwhile for waiters now gone: never claimed, never used.
        s := @schema@._revoke(s, ARRAY(
            SELECT id FROM @schema@.leases
            WHERE ticket_id = v_id AND process_id = s.caller AND NOT claimed
            ORDER BY acquired_at DESC, length(id) DESC, id DESC LIMIT v_beyond), false);
    END IF;
    IF p_withdrawal->>'timed_out_on' IS NOT NULL THEN
        UPDATE @schema@.limits
        SET timeouts = timeouts + CASE WHEN coalesce(v_count, 0) = 0 THEN 1 ELSE v_count END
        WHERE name = p_withdrawal->>'timed_out_on' AND id = ANY(s.locked);
    END IF;
    RETURN s;
END $$;

-- Free one lease; released says whether it was still held. One released after it
-- expired, before anything reclaimed it, counts as reclaimed in its limits' totals.
CREATE OR REPLACE FUNCTION @schema@._release(s @schema@.step_state, p_lease_id text)
RETURNS @schema@.step_state LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_lease record;
BEGIN
    WITH gone AS (
        DELETE FROM @schema@.leases WHERE id = p_lease_id
        RETURNING expires_at, limit_ids, holder, acquired_at, claimed
    ), units AS (
        DELETE FROM @schema@.holdings h
        WHERE h.limit_id = ANY((SELECT g.limit_ids FROM gone g)::bigint[]) AND h.lease_id = p_lease_id
        RETURNING h.limit_id, h.units
    ), recorded AS (  -- who held the units, and when (`run why`)
        INSERT INTO @schema@.held (limit_id, holder, units, acquired_at, released_at, lease_id)
        SELECT u.limit_id, g.holder, u.units, g.acquired_at, s.now, p_lease_id
        FROM units u CROSS JOIN gone g WHERE g.claimed
    ), counted AS (
        UPDATE @schema@.limits l
        SET in_use = l.in_use - u.units,
            reclaimed = l.reclaimed
                        + CASE WHEN (SELECT g.expires_at FROM gone g) > s.now THEN 0 ELSE 1 END
        FROM units u
        WHERE l.id = ANY((SELECT g.limit_ids FROM gone g)::bigint[]) AND l.id = u.limit_id
    )
    SELECT g.expires_at, g.limit_ids,
           EXISTS (SELECT 1 FROM @schema@.queue q
                   WHERE q.limit_id = ANY(g.limit_ids) AND NOT q.stalled) AS waited_on
    INTO v_lease FROM gone g;
    IF NOT FOUND THEN
        -- Gone: released already, or (resend) by the lost attempt of this exchange.
        s.released := s.released || jsonb_build_object(p_lease_id, s.resend);
        RETURN s;
    END IF;
    IF v_lease.waited_on THEN  -- (with nobody to hand its units to, no hand-off)
        s.touched := s.touched || v_lease.limit_ids;
    END IF;
    s.released := s.released || jsonb_build_object(p_lease_id, v_lease.expires_at > s.now);
    RETURN s;
END $$;

-- ------------------------------------------------------------------ asks

-- Look again at a ticket of the caller: claim what was handed to it, refuse (and
-- drop) it if a change made it impossible, serve it as far as it can be now, and
-- report it. A ticket that is gone is opened again at its old seq for its count,
-- less the grants claimed now. p_ask: {ticket, seq, count, request}.
CREATE OR REPLACE FUNCTION @schema@._ask(s @schema@.step_state, p_ask jsonb)
RETURNS @schema@.step_state LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_id text := p_ask->>'ticket';
    v_request jsonb := p_ask->'request';
    v_before integer := jsonb_array_length(s.mine);
    v_left integer;
    v_ticket @schema@.tickets;
    v_check jsonb;
    v_valid record;
    v_seq bigint;
BEGIN
    s := @schema@._claim(s, v_id);
    SELECT * INTO v_ticket FROM @schema@.tickets WHERE id = v_id;
    IF FOUND AND v_ticket.process_id = s.caller THEN
        v_check := @schema@._check(v_request->>'kind', (v_request->>'occupy')::integer,
                                   @schema@._active(@schema@._ticket_rows(v_id)));
        IF v_check IS NOT NULL THEN  -- a change made it impossible: it leaves the line
            s := @schema@._drop(s, v_id);
            s.refused := s.refused || jsonb_build_object(v_id, v_check);
            RETURN s;
        END IF;
        WITH unstalled AS (
            UPDATE @schema@.queue SET stalled = false WHERE ticket_id = v_id AND stalled
        )
        UPDATE @schema@.tickets SET expires_at = s.now + lease_ttl, step = s.step WHERE id = v_id;
        RETURN @schema@._wait_or_serve(s, v_id, v_request->>'id');
    END IF;
    v_left := (p_ask->>'count')::integer - (jsonb_array_length(s.mine) - v_before);
    -- What the lost attempt claimed for it (resend) counts as claimed now.
    v_left := v_left - (SELECT count(*) FROM jsonb_array_elements(s.resent) g
                        WHERE g->>'ticket_id' = v_id);
    IF v_left <= 0 THEN
        RETURN s;
    END IF;
    -- Gone (expired, or its last grant lapsed and went): open it again at its place.
    v_valid := @schema@._valid(s, v_request);
    s := v_valid.s;
    IF v_valid.active IS NULL THEN
        RETURN s;
    END IF;
    v_seq := @schema@._open_ticket(
        v_request->>'id', @schema@._texts(v_request->'names'),
        (v_request->>'occupy')::integer, v_request->>'kind', v_request->>'holder', s.caller,
        s.host, s.pid, v_valid.active, v_left, (p_ask->>'seq')::bigint, false, s.step, s.now);
    s.moved := s.moved || @schema@._ids(v_valid.active);
    RETURN @schema@._wait_or_serve(s, v_request->>'id', v_request->>'id');
END $$;

-- Claim the grants handed to one of the caller's tickets, if still live: each
-- becomes the caller's (a full lease TTL from now; a rate grant leaves nothing
-- behind). One that lapsed meanwhile goes back to its ticket (_revoke).
CREATE OR REPLACE FUNCTION @schema@._claim(s @schema@.step_state, p_ticket_id text)
RETURNS @schema@.step_state LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_lease @schema@.leases;
    v_lapsed text[] := '{}';
BEGIN
    FOR v_lease IN
        SELECT * FROM @schema@.leases
        WHERE ticket_id = p_ticket_id AND process_id = s.caller AND NOT claimed
        ORDER BY acquired_at, length(id), id  -- grant order: <ticket id>.<fence>
    LOOP
        IF v_lease.expires_at <= s.now THEN
            v_lapsed := v_lapsed || v_lease.id;
        ELSIF v_lease.kind = 'rate' THEN
            DELETE FROM @schema@.leases WHERE id = v_lease.id;
            s.mine := s.mine || jsonb_build_array(@schema@._granted(
                NULL, v_lease.names, v_lease.acquired_at, NULL, NULL, '{}', p_ticket_id));
        ELSE
            UPDATE @schema@.leases
            SET claimed = true, expires_at = s.now + lease_ttl, step = s.step
            WHERE id = v_lease.id;
            s.mine := s.mine || jsonb_build_array(@schema@._granted(
                v_lease.id, v_lease.names, v_lease.acquired_at, s.now + v_lease.lease_ttl,
                v_lease.lease_ttl, '{}', p_ticket_id));
        END IF;
    END LOOP;
    RETURN @schema@._revoke(s, v_lapsed, true);  -- too late: the ticket gets them back
END $$;

-- ------------------------------------------------------------------ requests

-- The active limits a request waits on, in name order, or NULL: refused (in the
-- state's refused, nothing changed); and the names that do not exist, in the
-- request's order, which also go into the state's missing (missing 'warn' or
-- 'ignore'). Only the limits the step holds count: one created since the step
-- locked is as yet missing.
CREATE OR REPLACE FUNCTION @schema@._valid(
    INOUT s @schema@.step_state, p_request jsonb, OUT active @schema@.limit_row[],
    OUT missing text[]
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_id text := p_request->>'id';
    v_names text[] := @schema@._texts(p_request->'names');
    v_rows @schema@.limit_row[];
    v_check jsonb;
BEGIN
    v_rows := ARRAY(
        SELECT ROW(l.id, l.name, l.slots, l.rate, l.burst, l.active, l.lease_ttl, l.tat,
                   (SELECT min(q.seq) FROM @schema@.queue q
                    WHERE q.limit_id = l.id AND NOT q.stalled),
                   l.in_use)::@schema@.limit_row
        FROM @schema@.limits l WHERE l.id = ANY(s.locked) AND l.name = ANY(v_names)
        ORDER BY l.name);
    missing := '{}';
    IF cardinality(v_rows) < cardinality(v_names) THEN  -- (names are distinct)
        missing := ARRAY(SELECT n FROM unnest(v_names) WITH ORDINALITY AS x(n, i)
                         WHERE n <> ALL(ARRAY(SELECT r.name FROM unnest(v_rows) r))
                         ORDER BY i);
    END IF;
    IF cardinality(missing) > 0 AND p_request->>'missing' = 'raise' THEN
        s.refused := s.refused || jsonb_build_object(
            v_id, jsonb_build_object('error', 'not_found', 'names', to_jsonb(missing)));
        RETURN;
    END IF;
    v_rows := @schema@._active(v_rows);
    v_check := @schema@._check(p_request->>'kind', (p_request->>'occupy')::integer, v_rows);
    IF v_check IS NOT NULL THEN
        s.refused := s.refused || jsonb_build_object(v_id, v_check);
        RETURN;
    END IF;
    IF cardinality(missing) > 0 THEN
        s.missing := s.missing || jsonb_build_object(v_id, to_jsonb(missing));
    END IF;
    active := v_rows;
END $$;

-- A new request: join the ticket it names if it may, else be granted as far as
-- nobody waits ahead and capacity allows, and queue the rest as one ticket
-- (named by the request's id). p_request: see exchange's parameters.
CREATE OR REPLACE FUNCTION @schema@._request(s @schema@.step_state, p_request jsonb)
RETURNS @schema@.step_state LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_id text := p_request->>'id';
    v_join text := p_request->>'join';
    v_kind text := p_request->>'kind';
    v_occupy integer := (p_request->>'occupy')::integer;
    v_count integer := (p_request->>'count')::integer;
    v_valid record;
    v_active @schema@.limit_row[];
    v_why text[];
    v_changes integer;
    v_seq bigint;
BEGIN
    IF s.resend THEN  -- did the lost attempt place it? Then it answers with what exists.
        IF EXISTS (SELECT 1 FROM @schema@.tickets WHERE id = v_id AND process_id = s.caller)
        THEN
            s.waiting := s.waiting || jsonb_build_object(v_id, v_id);
            RETURN @schema@._missing(s, p_request);
        ELSIF EXISTS (SELECT 1 FROM @schema@.leases
                      WHERE ticket_id = v_id AND process_id = s.caller) THEN
            RETURN @schema@._missing(s, p_request);  -- its grants are answered already
        ELSIF v_join = ANY(s.stamped) THEN
            s.joined := s.joined || jsonb_build_object(v_id, v_join);
            s.waiting := s.waiting || jsonb_build_object(v_join, v_id);
            RETURN @schema@._missing(s, p_request);
        END IF;
    END IF;
    v_valid := @schema@._valid(s, p_request);
    s := v_valid.s;
    v_active := v_valid.active;
    IF v_active IS NULL THEN
        RETURN s;
    END IF;
    IF v_join IS NOT NULL AND @schema@._join(s, p_request) THEN
        s.joined := s.joined || jsonb_build_object(v_id, v_join);
        RETURN @schema@._wait_or_serve(s, v_join, v_id);
    END IF;
    WHILE v_count > 0 LOOP
        v_why := @schema@._blockers(v_kind, v_occupy, v_active, NULL, s.now);
        -- Something expired in the way? Look again with fresh numbers.
        IF 'slots' = ANY(v_why) OR 'rate' = ANY(v_why) THEN
            v_changes := cardinality(s.touched) + cardinality(s.moved);
            s := @schema@._reclaim(s, @schema@._ids(v_active));
            IF cardinality(s.touched) + cardinality(s.moved) > v_changes THEN
                v_active := @schema@._rows(@schema@._ids(v_active));
                v_why := @schema@._blockers(v_kind, v_occupy, v_active, NULL, s.now);
            END IF;
        END IF;
        EXIT WHEN @schema@._any(v_why);
        s.mine := s.mine || jsonb_build_array(@schema@._grant(
            v_id, NULL, s.caller, p_request->>'holder', s.host, s.pid, v_occupy, v_kind,
            v_active, v_valid.missing, true, s.step, s.now, NULL));
        v_count := v_count - 1;
        IF v_count > 0 THEN
            v_active := @schema@._rows(@schema@._ids(v_active));
        END IF;
    END LOOP;
    IF v_count = 0 THEN
        RETURN s;
    END IF;
    v_seq := @schema@._open_ticket(
        v_id, @schema@._texts(p_request->'names'), v_occupy, v_kind, p_request->>'holder',
        s.caller, s.host, s.pid, v_active, v_count, NULL, false, s.step, s.now);
    s.moved := s.moved || @schema@._ids(v_active);
    s.waiting := s.waiting || jsonb_build_object(v_id, v_id);
    RETURN s;
END $$;

-- The names of a request that do not exist, into the state's missing (as _valid
-- would put them), for a resent request answered with what exists.
CREATE OR REPLACE FUNCTION @schema@._missing(s @schema@.step_state, p_request jsonb)
RETURNS @schema@.step_state LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_missing text[] := ARRAY(
        SELECT n FROM jsonb_array_elements_text(p_request->'names') WITH ORDINALITY AS x(n, i)
        WHERE NOT EXISTS (SELECT 1 FROM @schema@.limits WHERE name = n) ORDER BY i);
BEGIN
    IF cardinality(v_missing) > 0 THEN
        s.missing := s.missing || jsonb_build_object(p_request->>'id', to_jsonb(v_missing));
    END IF;
    RETURN s;
END $$;

-- Add a request to the ticket it names (join), if that ticket is the caller's, waits
-- for the same request (names, occupy, kind, holder) and nobody queued after it on
-- any of its limits; whether it did.
CREATE OR REPLACE FUNCTION @schema@._join(s @schema@.step_state, p_request jsonb)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_ticket @schema@.tickets;
    v_count integer := (p_request->>'count')::integer;
    v_arrivals record;
BEGIN
    SELECT * INTO v_ticket FROM @schema@.tickets WHERE id = p_request->>'join';
    IF NOT FOUND
            OR v_ticket.process_id <> s.caller
            OR v_ticket.wanted <= 0
            OR v_ticket.names <> @schema@._texts(p_request->'names')
            OR v_ticket.occupy <> (p_request->>'occupy')::integer
            OR v_ticket.kind <> p_request->>'kind'
            OR v_ticket.holder <> p_request->>'holder' THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 FROM @schema@.queue q
               WHERE q.limit_id = ANY(ARRAY(
                         SELECT limit_id FROM @schema@.queue WHERE ticket_id = v_ticket.id))
                 AND q.seq > v_ticket.seq) THEN
        RETURN false;  -- somebody queued after it: joining would overtake them
    END IF;
    v_arrivals := @schema@._arrivals(v_ticket);
    UPDATE @schema@.tickets
    SET wanted = wanted + v_count, arrival_at = v_arrivals.at || s.now,
        arrival_n = v_arrivals.n || v_count, expires_at = s.now + lease_ttl, step = s.step
    WHERE id = v_ticket.id;
    RETURN true;
END $$;

-- ------------------------------------------------------------------ serving and reporting

-- Serve one of the caller's tickets as far as it can be now (something expired in
-- the way is reclaimed first); the rest waits. It is reported at the end of the
-- step (p_request_id names what is missing for it).
CREATE OR REPLACE FUNCTION @schema@._wait_or_serve(
    s @schema@.step_state, p_ticket_id text, p_request_id text
) RETURNS @schema@.step_state LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_ticket @schema@.tickets;
    v_active @schema@.limit_row[];
    v_why text[];
    v_changes integer;
BEGIN
    s.waiting := s.waiting || jsonb_build_object(p_ticket_id, p_request_id);
    SELECT * INTO v_ticket FROM @schema@.tickets WHERE id = p_ticket_id;
    IF NOT FOUND THEN
        RETURN s;
    END IF;
    v_active := @schema@._active(@schema@._ticket_rows(p_ticket_id));
    IF cardinality(v_active) > 0 THEN
        v_why := @schema@._blockers(v_ticket.kind, v_ticket.occupy, v_active, v_ticket.seq, s.now);
        IF @schema@._any(v_why) THEN
            v_changes := cardinality(s.touched) + cardinality(s.moved);
            s := @schema@._reclaim(s, @schema@._ids(v_active));
            IF cardinality(s.touched) + cardinality(s.moved) > v_changes THEN
                v_active := @schema@._active(@schema@._ticket_rows(p_ticket_id));
                v_why := @schema@._blockers(v_ticket.kind, v_ticket.occupy, v_active,
                                            v_ticket.seq, s.now);
            END IF;
            IF @schema@._any(v_why) THEN
                RETURN s;
            END IF;
        END IF;
    END IF;
    -- Nothing in the way (or, every limit it waits on disabled, nothing to wait on).
    RETURN @schema@._serve(s, p_ticket_id);
END $$;

-- Grant the caller's own ticket as many times as it wants and can be served now.
CREATE OR REPLACE FUNCTION @schema@._serve(s @schema@.step_state, p_ticket_id text)
RETURNS @schema@.step_state LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_ticket @schema@.tickets;
    v_active @schema@.limit_row[];
BEGIN
    LOOP
        SELECT * INTO v_ticket FROM @schema@.tickets WHERE id = p_ticket_id;
        EXIT WHEN NOT FOUND OR v_ticket.wanted <= 0;
        v_active := @schema@._active(@schema@._ticket_rows(p_ticket_id));
        EXIT WHEN @schema@._any(@schema@._blockers(v_ticket.kind, v_ticket.occupy, v_active,
                                                   v_ticket.seq, s.now));
        s := @schema@._grant_to_ticket(s, v_ticket, v_active, true);
    END LOOP;
    RETURN s;
END $$;

-- When something that sends no wake-up (a rate token, the expiry of a lease or
-- ticket in the way) may let this request in: seconds from now, or NULL. (Plain
-- index scans, as exchange sets them.)
CREATE OR REPLACE FUNCTION @schema@._retry_in(
    p_occupy integer, p_active @schema@.limit_row[], p_why text[], p_seq bigint,
    p_now double precision
) RETURNS double precision LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_at double precision;
    v_soonest double precision;
    v_row @schema@.limit_row;
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

-- Where one of the caller's tickets waits (a Queued), or NULL if it is gone: the
-- first limit that refuses it, its place there counting every grant wanted ahead
-- (stalled tickets too), and when to look again unwoken.
CREATE OR REPLACE FUNCTION @schema@._report(
    s @schema@.step_state, p_ticket_id text, p_missing text[]
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_found record;
    v_ticket @schema@.tickets;
    v_active @schema@.limit_row[];
    v_why text[];
    v_first integer;
    v_blocked boolean;
    v_position bigint := 1;
    v_retry double precision := 0.001;  -- it can be served (it is stalled): look at once
BEGIN
    SELECT t AS t, ARRAY(  -- its limits, as _ticket_rows reads them (one query for both)
               SELECT ROW(l.id, l.name, l.slots, l.rate, l.burst, l.active, l.lease_ttl, l.tat,
                          (SELECT min(h.seq) FROM @schema@.queue h
                           WHERE h.limit_id = l.id AND NOT h.stalled),
                          l.in_use)::@schema@.limit_row
               FROM @schema@.queue q JOIN @schema@.limits l ON l.id = q.limit_id
               WHERE q.ticket_id = t.id ORDER BY l.name) AS rows
    INTO v_found FROM @schema@.tickets t WHERE t.id = p_ticket_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_ticket := v_found.t;
    v_active := @schema@._active(v_found.rows);
    v_why := @schema@._blockers(v_ticket.kind, v_ticket.occupy, v_active, v_ticket.seq, s.now);
    FOR i IN 1 .. cardinality(v_why) LOOP
        IF v_why[i] IS NOT NULL THEN
            v_first := i;
            EXIT;
        END IF;
    END LOOP;
    v_blocked := v_first IS NOT NULL;
    IF v_blocked THEN
        v_retry := @schema@._retry_in(v_ticket.occupy, v_active, v_why, v_ticket.seq, s.now);
    ELSIF cardinality(v_active) > 0 THEN
        v_first := 1;
    END IF;
    IF v_first IS NOT NULL THEN
        SELECT coalesce(sum(t.wanted), 0) + 1 INTO v_position
        FROM @schema@.queue q JOIN @schema@.tickets t ON t.id = q.ticket_id
        WHERE q.limit_id = v_active[v_first].id AND q.seq < v_ticket.seq;
    END IF;
    RETURN jsonb_build_object(
        'request_id', v_ticket.id, 'seq', v_ticket.seq,
        'blocked_on', coalesce(v_active[v_first].name, ''), 'position', v_position,
        'retry_in', v_retry, 'lease_ttl', v_ticket.lease_ttl, 'missing', to_jsonb(p_missing),
        'wanted', v_ticket.wanted);
END $$;
