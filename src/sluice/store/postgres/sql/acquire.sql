-- Step: acquire — grant a request now, or queue it (one transaction).
-- Parameters:
--   p_request_id  text      the attempt: its ticket id while queued, its lease id once granted
--   p_names       text[]    limit names, sorted and distinct
--   p_occupy      integer   units of every named limit
--   p_kind        text      'concurrency' (slots and tokens) or 'rate' (tokens only)
--   p_holder      text      label recorded with the lease or ticket
--   p_missing     text      'raise' | 'warn' | 'ignore': what a missing name does
--   p_seq         bigint    NULL for a first attempt; a retry's place in line
--   p_process_id  text      the calling process (its wake-up channel is sluice_<id>)
--   p_host        text      host name, for inspect
--   p_pid         integer   process id, for inspect
-- Returns: jsonb, a Granted {granted: true, lease_id, names, acquired_at, expires_at,
--   lease_ttl, missing} or a Queued {granted: false, request_id, seq, blocked_on,
--   position, retry_in, lease_ttl, missing}; with 'wake': ticket ids of the
--   caller's process to wake when the step also handed units to others.
-- Raises: SL404 (detail: JSON list of missing names) when p_missing is 'raise';
--   SL400 (detail: JSON {rule, name, ...}) for a request no limit could ever meet.
-- Locks: the named limits, in name order; others only with SKIP LOCKED.
CREATE OR REPLACE FUNCTION @schema@.acquire(
    p_request_id text, p_names text[], p_occupy integer, p_kind text, p_holder text,
    p_missing text, p_seq bigint, p_process_id text, p_host text, p_pid integer
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_now double precision;
    v_result jsonb;
    v_locked bigint[];
    v_rows @schema@.limit_row[];
    v_active @schema@.limit_row[];
    v_row @schema@.limit_row;
    v_missing text[];
    v_seq bigint := p_seq;
    v_has_ticket boolean := false;
    v_queued_since double precision;  -- its ticket's created_at, if it has one
    v_why text[];
    v_touched bigint[] := '{}';
    v_moved bigint[] := '{}';
    v_reclaim record;
    v_ids bigint[];
    v_bound integer;
    v_one record;
    v_head bigint;
    v_tat double precision;
    v_ttl double precision;
BEGIN
    IF p_seq IS NULL AND cardinality(p_names) = 1 THEN
        -- Fast path, the same decision in scalars: a first attempt on one active
        -- limit with nobody queued and room now is granted here; anything else
        -- (queue, refuse, raise) goes on to the general path below.
        SELECT id, slots, rate, burst, active, lease_ttl, tat, in_use INTO v_one
        FROM @schema@.limits WHERE name = p_names[1] FOR UPDATE;
        IF FOUND AND v_one.active
                AND NOT (p_kind = 'rate' AND v_one.rate IS NULL)
                AND (p_occupy <= v_one.burst OR v_one.burst IS NULL) THEN
            v_head := (SELECT min(seq) FROM @schema@.queue WHERE limit_id = v_one.id);
            v_now := @schema@._now();
            v_tat := v_one.tat;
            IF v_one.rate IS NOT NULL THEN
                IF v_one.tat + (p_occupy - v_one.burst)::double precision / v_one.rate <= v_now
                THEN
                    v_tat := greatest(v_one.tat, v_now) + p_occupy::double precision / v_one.rate;
                ELSE
                    v_tat := NULL;  -- no token yet
                END IF;
            END IF;
            IF v_head IS NULL AND v_tat IS NOT NULL AND (
                    p_kind = 'rate' OR v_one.slots IS NULL
                    OR v_one.in_use + p_occupy <= v_one.slots) THEN
                -- One UPDATE of the locked row: tokens, units and the grant's totals.
                UPDATE @schema@.limits
                SET tat = v_tat,
                    in_use = in_use + CASE WHEN p_kind = 'concurrency' AND v_one.slots IS NOT NULL
                                           THEN p_occupy ELSE 0 END,
                    grants = grants + 1, granted_units = granted_units + p_occupy
                WHERE id = v_one.id;
                IF p_kind = 'concurrency' AND v_one.slots IS NOT NULL THEN
                    INSERT INTO @schema@.holdings (limit_id, lease_id, units)
                    VALUES (v_one.id, p_request_id, p_occupy);
                END IF;
                IF p_kind = 'rate' THEN
                    RETURN @schema@._granted(NULL, p_names, v_now, NULL, NULL, '{}');
                END IF;
                v_ttl := v_one.lease_ttl;
                INSERT INTO @schema@.leases (id, limit_ids, names, kind, process_id, holder, host,
                                             pid, occupy, lease_ttl, acquired_at, expires_at)
                VALUES (p_request_id,
                        CASE WHEN v_one.slots IS NULL THEN '{}'::bigint[]
                             ELSE ARRAY[v_one.id] END,
                        p_names, p_kind, p_process_id, p_holder, p_host, p_pid, p_occupy, v_ttl,
                        v_now, v_now + v_ttl);
                RETURN @schema@._granted(p_request_id, p_names, v_now, v_now + v_ttl, v_ttl, '{}');
            END IF;
        END IF;
    END IF;
    IF p_seq IS NOT NULL THEN
        -- A woken waiter most often finds its units already handed over: no lock needed.
        v_result := @schema@._collect(p_request_id, @schema@._now());
        IF v_result IS NOT NULL THEN
            RETURN v_result;
        END IF;
    END IF;
    v_locked := @schema@._lock_names(p_names);
    v_now := @schema@._now();
    IF p_seq IS NOT NULL THEN
        -- Handed over while this step waited for its locks?
        v_result := @schema@._collect(p_request_id, v_now);
        IF v_result IS NOT NULL THEN
            RETURN v_result;
        END IF;
        -- Handed over, but its waiter was away past the lease's TTL: the units go
        -- back (reclaimed: it expired) and the waiter queues again at its old
        -- place. (Its limits are among the names, so they are locked.)
        v_touched := @schema@._revoke(ARRAY[p_request_id], v_now);
    END IF;
    v_rows := @schema@._rows(v_locked);
    v_missing := ARRAY(SELECT n FROM unnest(p_names) AS n
                       WHERE n <> ALL(ARRAY(SELECT r.name FROM unnest(v_rows) AS r))
                       ORDER BY n);
    IF cardinality(v_missing) > 0 AND p_missing = 'raise' THEN
        RAISE EXCEPTION 'no limit named %', array_to_string(v_missing, ', ')
            USING ERRCODE = 'SL404', DETAIL = to_jsonb(v_missing)::text;
    END IF;
    v_active := @schema@._active(v_rows);
    FOREACH v_row IN ARRAY v_active LOOP
        IF p_kind = 'rate' AND v_row.rate IS NULL THEN
            RAISE EXCEPTION 'rate request on limit % without a rate', v_row.name
                USING ERRCODE = 'SL400',
                      DETAIL = jsonb_build_object('rule', 'no_rate', 'name', v_row.name)::text;
        END IF;
        v_bound := @schema@._max_occupy(v_row, p_kind);
        IF v_bound IS NOT NULL AND p_occupy > v_bound THEN
            RAISE EXCEPTION 'occupy % can never be met by limit %', p_occupy, v_row.name
                USING ERRCODE = 'SL400',
                      DETAIL = jsonb_build_object(
                          'rule', 'occupy', 'name', v_row.name, 'occupy', p_occupy,
                          'bound', v_bound,
                          'what', CASE WHEN v_bound = v_row.slots THEN 'slots'
                                       ELSE 'burst' END)::text;
        END IF;
    END LOOP;
    IF v_seq IS NOT NULL THEN  -- keep the place the ticket already has
        SELECT seq, created_at INTO v_seq, v_queued_since
        FROM @schema@.tickets WHERE id = p_request_id;
        v_has_ticket := FOUND;
        v_seq := coalesce(v_seq, p_seq);
    END IF;
    v_why := @schema@._blockers(p_kind, p_occupy, v_active, v_seq, v_now);
    -- Reclaim what is in the way (expired), unless only other waiters are ahead
    -- of a newcomer: those are reclaimed by whoever waits right behind them.
    IF @schema@._any(v_why) AND (v_seq IS NOT NULL OR 'slots' = ANY(v_why) OR 'rate' = ANY(v_why))
    THEN
        v_ids := @schema@._ids(v_active);
        SELECT * INTO v_reclaim FROM @schema@._reclaim(v_ids, v_locked, v_now);
        IF v_reclaim.changed THEN
            -- Something expired in the way: look again with fresh numbers.
            v_touched := v_touched || v_reclaim.touched;
            v_moved := v_moved || v_reclaim.moved;
            v_locked := v_reclaim.locked;
            v_active := @schema@._rows(v_ids);
            v_why := @schema@._blockers(p_kind, p_occupy, v_active, v_seq, v_now);
        END IF;
    END IF;
    IF NOT @schema@._any(v_why) THEN
        IF p_seq IS NOT NULL THEN
            v_ids := @schema@._drop_ticket(p_request_id);
            IF v_ids IS NOT NULL THEN
                v_touched := v_touched || v_ids;
                v_moved := v_moved || v_ids;
            END IF;
        END IF;
        v_result := @schema@._take(p_request_id, p_process_id, p_holder, p_host, p_pid,
                                   p_occupy, p_kind, v_active, v_missing, false, v_now,
                                   v_queued_since);
    ELSE
        v_result := @schema@._queue(p_request_id, p_names, p_occupy, p_kind, p_holder,
                                    p_process_id, p_host, p_pid, v_active, v_missing, v_seq,
                                    v_has_ticket, v_why, v_now);
    END IF;
    IF cardinality(v_touched) > 0 THEN
        v_result := v_result || jsonb_build_object('wake', @schema@._hand_off(
            v_touched, v_moved, v_locked, NULL, NULL, p_process_id, v_now));
    END IF;
    RETURN v_result;
END $$;
