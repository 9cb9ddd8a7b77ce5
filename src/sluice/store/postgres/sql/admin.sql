-- Steps: admin_record and admin_history — the audit record of admin actions (table
-- admin, migrate_006.sql).
--
-- admin_record puts one action on record and passes its step's reply through. An admin
-- step is called as its argument, in the same statement, so the same transaction: the
-- action and its record commit together or not at all, e.g.
--   SELECT s.admin_record(s.set_active(...), (SELECT s._limit_json(l) FROM s.limits l
--                         WHERE l.name = $1), $1, 'enable', '{}', $who)
-- (the subquery reads the statement's snapshot: the limit as it was before the step).
-- Parameters:
--   p_reply    jsonb    the step's reply ('{}' for an action done outside a step)
--   p_before   jsonb    the limit before the action (_limit_json), or NULL
--   p_name     text     the limit
--   p_action   text     update, enable, disable, reset or delete
--   p_extra    jsonb    changes known to the caller (delete: {force})
--   p_who      jsonb    the actor (sluice.store.audit.Actor)
-- Changes recorded: p_extra, plus for delete {limit: p_before}; for reset {revoked}
--   from the reply; else each field of the limit that differs between p_before and the
--   reply's limit, as {from, to}.
-- Returns: p_reply, with at: the time recorded (the store's clock).
-- Keeps: the newest 1,000 records of the name.
CREATE OR REPLACE FUNCTION @schema@.admin_record(
    p_reply jsonb, p_before jsonb, p_name text, p_action text, p_extra jsonb, p_who jsonb
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_changes jsonb := coalesce(p_extra, '{}'::jsonb);
    v_after jsonb := p_reply -> 'limit';
    v_key text;
    v_at double precision := @schema@._now();
BEGIN
    IF p_action = 'delete' THEN
        v_changes := v_changes || jsonb_build_object('limit', p_before);
    ELSIF p_action = 'reset' THEN
        v_changes := v_changes || jsonb_build_object('revoked', p_reply -> 'revoked');
    ELSIF v_after IS NOT NULL AND p_before IS NOT NULL THEN
        FOREACH v_key IN ARRAY ARRAY['slots', 'rate', 'burst', 'lease_ttl', 'active'] LOOP
            IF (p_before -> v_key) IS DISTINCT FROM (v_after -> v_key) THEN
                v_changes := v_changes || jsonb_build_object(
                    v_key, jsonb_build_object('from', p_before -> v_key, 'to', v_after -> v_key));
            END IF;
        END LOOP;
    END IF;
    INSERT INTO @schema@.admin (limit_name, action, at, who, changes)
    VALUES (p_name, p_action, v_at, p_who, v_changes);
    DELETE FROM @schema@.admin
    WHERE limit_name = p_name AND id < (
        SELECT id FROM @schema@.admin WHERE limit_name = p_name
        ORDER BY id DESC OFFSET 999 LIMIT 1);
    RETURN coalesce(p_reply, '{}'::jsonb) || jsonb_build_object('at', v_at, 'changes', v_changes);
END $$;

-- admin_history: the newest records of a limit, newest first (one statement, no locks).
-- Parameters: p_name text, p_count integer.
-- Returns: jsonb, a list of {limit, action, at, who, changes}.
CREATE OR REPLACE FUNCTION @schema@.admin_history(p_name text, p_count integer)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'limit', a.limit_name, 'action', a.action, 'at', a.at, 'who', a.who,
               'changes', a.changes) ORDER BY a.id DESC), '[]')
    FROM (SELECT * FROM @schema@.admin WHERE limit_name = p_name
          ORDER BY id DESC LIMIT p_count) a
$$;
