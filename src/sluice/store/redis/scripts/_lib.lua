-- Shared library of the Redis store's step scripts; prepended to each step file.
--
-- Every step script is called with:
--   KEYS[1]  the deployment's meta hash, "<{tag}>:meta". Every other key the
--            script touches is derived from its prefix "<{tag}>", so all keys
--            share one hash tag and a Redis Cluster keeps them on one shard.
--   ARGV[1]  the calling process's id (wake-ups for it are returned, not published)
--   ARGV[2]  the store epoch the caller knows ('' if none yet)
-- and answers one JSON document (see `finish`). Times are seconds since the
-- epoch on the Redis server's clock (TIME).
--
-- Keys (P is the prefix); schema 2 (fields marked * are new in 2; data written by
-- schema 1 lacks them and reads as their defaults, so it is used in place):
--   P:meta          hash   epoch, seq (ticket arrival counter), schema, fence* (grant counter:
--                          never below the server clock in microseconds, see next_fence)
--   P:limits        set    limit names
--   P:l:NAME        hash   slots rate burst active lease_ttl tat in_use version created_at updated_at
--   P:h:NAME        hash   lease id -> units held on NAME
--   P:he:NAME       zset   lease id -> expires_at, for leases holding NAME
--   P:q:NAME        zset   ticket id -> seq: NAME's FIFO queue of tickets that hand-offs serve
--   P:qs:NAME*      zset   ticket id -> seq: NAME's stalled tickets (a grant handed to them
--                          lapsed unclaimed): passed by until their process asks again, but
--                          still in line (positions count them)
--   P:qe:NAME       zset   ticket id -> expires_at, for tickets queued on NAME (both zsets)
--   P:n:NAME        set    ids of tickets that named NAME (queued on it or not)
--   P:lease:ID      hash   kind names holds process_id holder host pid occupy lease_ttl
--                          acquired_at expires_at, and for a grant handed to a ticket and not
--                          yet claimed: claimed* = '0', ticket_id*, ticket_seq*, ticket_expires*
--                          (the ticket's, when handed) (absent: claimed).
--                          ID is <ticket or request id>.<fence>
--   P:u:TICKET*     zset   lease id -> fence: grants handed to TICKET, not yet claimed
--   P:t:ID          hash   seq process_id holder host pid occupy kind names queues lease_ttl
--                          created_at expires_at, wanted* (grants still wanted; absent: 1),
--                          arrivals* ("time:count,..." oldest first; absent or '': all at
--                          created_at), stalled* ('1'; absent: not stalled)
--   P:tot:NAME      hash   NAME's totals, counted by the steps that cause them: grants
--                          granted_units timeouts reclaimed wait_seconds, and qw0 .. qw12:
--                          grants that had queued, per wait bucket (WAIT_BUCKETS below);
--                          no TTL, like P:l:NAME; deleted (and cleared on create) with NAME
--   P:x:PROCESS*    string the id and reply of that process's last exchange (resends)
--   channel P:wake:PROCESS_ID   JSON array of ticket ids to look at again
--
-- Lua scripts are not rolled back on error: every step validates before it
-- writes, and the helpers below keep the indexes consistent with each other.

local META = KEYS[1]
local P = string.sub(META, 1, -6)
local ME = ARGV[1]
local KNOWN_EPOCH = ARGV[2]
local SCHEMA = 2
local GRACE = 60 -- seconds a lapsed lease or ticket hash outlives its expiry (GC backstop)
local DEFAULT_TTL = 30
local CLAIM_WINDOW = 2.0 -- sluice.store.base.CLAIM_WINDOW
-- Seconds within which requests joining a ticket count as one arrival, as
-- sluice.store.sqlite.tx.ARRIVALS_JOIN_WINDOW (fewer arrivals segments).
local ARRIVALS_JOIN_WINDOW = 0.005
-- Upper bounds (seconds) of the wait buckets, as sluice.limits.model.WAIT_BUCKETS; a
-- last, unbounded bucket follows. Bucket i (0-based) is totals field 'qw' .. i.
local WAIT_BUCKETS = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0}

local NOW, NOW_US
do
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000
  NOW_US = tonumber(t[1]) * 1000000 + tonumber(t[2]) -- exact as a double until 2255
end

local function key(kind, id) return P .. ':' .. kind .. ':' .. id end
local function fmt(x) return string.format('%.17g', x) end
local function int(x) return string.format('%d', x) end
local function expire_at(k, at) redis.call('PEXPIREAT', k, math.floor((at + GRACE) * 1000)) end

local function split(text)
  local out = {}
  if text == nil or text == false or text == '' then return out end
  for part in string.gmatch(text, '[^,]+') do out[#out + 1] = part end
  return out
end

local function join(list) return table.concat(list, ',') end

-- Replies are JSON (cjson). cjson keeps only 14 significant digits, so times and
-- other fractional numbers travel as strings formatted by fmt(); Python parses them.

-- The epoch names this incarnation of the data: a server that restarted
-- without persistence starts a new one, and seqs of the old one mean nothing.
local EPOCH
do
  local m = redis.call('HMGET', META, 'epoch', 'schema')
  EPOCH = m[1]
  if not EPOCH then
    EPOCH = fmt(NOW)
    redis.call('HSET', META, 'epoch', EPOCH, 'schema', SCHEMA)
  elseif (tonumber(m[2]) or 0) < SCHEMA then
    redis.call('HSET', META, 'schema', SCHEMA) -- missing fields of older data read as defaults
  end
end
local STALE_EPOCH = KNOWN_EPOCH ~= '' and KNOWN_EPOCH ~= EPOCH

-- What this step changed: limits whose capacity or queue changed, limits whose
-- queue head may have changed, and tickets to wake (id -> process id).
local touched, moved, wakes = {}, {}, {}
-- The process whose exchange this is (set by exchange.lua): a hand-off to its
-- tickets is its grant at once (claimed, in `mine`). nil in every other step,
-- whose hand-offs all wait to be claimed.
local CALLER = nil
local mine = {}
local ended = {} -- the caller's tickets that this step served to the end (id -> true)

-- --------------------------------------------------------------------- limits

local function load_limit(name)
  local v = redis.call('HMGET', key('l', name),
    'slots', 'rate', 'burst', 'active', 'lease_ttl', 'tat', 'in_use', 'version')
  if not v[5] then return nil end
  return {
    name = name, slots = tonumber(v[1]), rate = tonumber(v[2]), burst = tonumber(v[3]),
    active = v[4] == '1', lease_ttl = tonumber(v[5]), tat = tonumber(v[6]) or 0,
    in_use = tonumber(v[7]) or 0, version = tonumber(v[8]) or 0,
  }
end

local function limit_reply(l)
  return {name = l.name, slots = l.slots, rate = l.rate and fmt(l.rate), burst = l.burst,
          active = l.active, lease_ttl = fmt(l.lease_ttl), version = l.version}
end

-- The active ones of these limits (loaded, sorted by name, each once).
local function active_limits(names)
  local rows, seen = {}, {}
  for _, name in ipairs(names) do
    if not seen[name] then
      seen[name] = true
      local l = load_limit(name)
      if l and l.active then rows[#rows + 1] = l end
    end
  end
  table.sort(rows, function(a, b) return a.name < b.name end)
  return rows
end

-- --------------------------------------------------------------------- totals

-- The bucket (0-based, as sluice.limits.model.wait_bucket) a wait falls in.
local function wait_bucket(seconds)
  for i, bound in ipairs(WAIT_BUCKETS) do
    if seconds <= bound then return i - 1 end
  end
  return #WAIT_BUCKETS
end

-- Count a grant of `occupy` units in a limit's totals; `queued_since` is when the
-- granted request arrived if it queued (nil for a grant at once, which waited 0
-- and which the reader puts in the first bucket itself: two HINCRBYs, no more).
local function count_grant(name, occupy, queued_since)
  local tkey = key('tot', name)
  redis.call('HINCRBY', tkey, 'grants', 1)
  redis.call('HINCRBY', tkey, 'granted_units', occupy)
  if queued_since then
    local waited = math.max(NOW - queued_since, 0)
    redis.call('HINCRBY', tkey, 'qw' .. wait_bucket(waited), 1)
    redis.call('HINCRBYFLOAT', tkey, 'wait_seconds', fmt(waited))
  end
end

-- Count one expired lease that held units of the limit reclaimed.
local function count_reclaimed(name)
  redis.call('HINCRBY', key('tot', name), 'reclaimed', 1)
end

-- The limit's totals, as strings (cjson would round big counters and fractions).
local function totals_reply(name)
  local fields = {'grants', 'granted_units', 'timeouts', 'reclaimed', 'wait_seconds'}
  for i = 0, #WAIT_BUCKETS do fields[#fields + 1] = 'qw' .. i end
  local v = redis.call('HMGET', key('tot', name), unpack(fields))
  local waits = {}
  for i = 6, #fields do waits[#waits + 1] = v[i] or '0' end
  return {grants = v[1] or '0', granted_units = v[2] or '0', timeouts = v[3] or '0',
          reclaimed = v[4] or '0', wait_seconds = v[5] or '0', queued_waits = waits}
end

-- --------------------------------------------------------------------- deciding

-- The seq and id of the ticket heading NAME's queue (stalled tickets passed by).
local function head_seq(name)
  local h = redis.call('ZRANGE', key('q', name), 0, 0, 'WITHSCORES')
  if h[1] then return tonumber(h[2]), h[1] end
  return nil, nil
end

local function max_occupy(l, kind)
  local bound = nil
  if kind == 'concurrency' and l.slots then bound = l.slots end
  if l.burst and (bound == nil or l.burst < bound) then bound = l.burst end
  return bound
end

-- Why no amount of waiting can serve the request on these limits as they are now
-- (an error for the reply), or nil.
local function check_request(kind, occupy, active)
  for _, l in ipairs(active) do
    if kind == 'rate' and not l.rate then return {error = 'rate_without_rate', name = l.name} end
    local bound = max_occupy(l, kind)
    if bound and occupy > bound then
      return {error = 'occupy_too_big', name = l.name, bound = bound, occupy = occupy,
              what = (bound == l.slots and kind == 'concurrency') and 'slots' or 'burst'}
    end
  end
  return nil
end

-- GCRA, exactly as sluice/limits/gcra.py.
local function allow_at(tat, rate, burst, n) return tat + (n - burst) / rate end

-- Each active limit that refuses the request now, with why: queue, slots or rate.
-- `seq`: the request's place in line (nil for a newcomer, behind everyone); `known`:
-- the limit whose queue head was just read, if any, and that head's seq.
local function blockers(kind, occupy, active, seq, known, known_head)
  local out = {}
  for _, l in ipairs(active) do
    local head
    if l.name == known then head = known_head else head = head_seq(l.name) end
    if head and (seq == nil or head < seq) then
      out[#out + 1] = {l, 'queue'}
    elseif kind == 'concurrency' and l.slots and l.in_use + occupy > l.slots then
      out[#out + 1] = {l, 'slots'}
    elseif l.rate and l.burst and allow_at(l.tat, l.rate, l.burst, occupy) > NOW then
      out[#out + 1] = {l, 'rate'}
    end
  end
  return out
end

-- --------------------------------------------------------------------- arrivals

-- When a ticket's wanted grants arrived, oldest first: {{time, count}, ...}.
local function arrival_list(t)
  local out = {}
  if t.arrivals == '' then
    if t.wanted > 0 then out[1] = {t.created_at, t.wanted} end
    return out
  end
  for part in string.gmatch(t.arrivals, '[^,]+') do
    local at, n = string.match(part, '^([^:]+):(%d+)$')
    out[#out + 1] = {tonumber(at), tonumber(n)}
  end
  return out
end

-- The arrivals field for these segments ('' when none is left).
local function arrivals_text(segments)
  local kept = {}
  for _, s in ipairs(segments) do
    if s[2] > 0 then kept[#kept + 1] = fmt(s[1]) .. ':' .. int(s[2]) end
  end
  return table.concat(kept, ',')
end

-- Remove `count` from the oldest segments; return what is left.
local function take_arrivals(segments, count)
  local left = {}
  for _, s in ipairs(segments) do
    local used = math.min(s[2], count)
    count = count - used
    if s[2] - used > 0 then left[#left + 1] = {s[1], s[2] - used} end
  end
  return left
end

-- --------------------------------------------------------------------- tickets

local function load_ticket(ticket_id)
  local v = redis.call('HMGET', key('t', ticket_id), 'seq', 'process_id', 'holder', 'host',
    'pid', 'occupy', 'kind', 'queues', 'expires_at', 'names', 'created_at', 'wanted',
    'arrivals', 'stalled', 'lease_ttl')
  if not v[1] then return nil end
  return {id = ticket_id, seq = tonumber(v[1]), process_id = v[2], holder = v[3], host = v[4],
          pid = tonumber(v[5]), occupy = tonumber(v[6]), kind = v[7], queues = split(v[8]),
          expires_at = tonumber(v[9]), names = v[10] or '', created_at = tonumber(v[11]) or NOW,
          wanted = tonumber(v[12]) or 1, arrivals = v[13] or '', stalled = v[14] == '1',
          lease_ttl = tonumber(v[15]) or DEFAULT_TTL}
end

-- The limits a ticket is queued on (active or not), sorted by name.
local function ticket_limits(t)
  local rows = {}
  for _, name in ipairs(t.queues) do
    local l = load_limit(name)
    if l then rows[#rows + 1] = l end
  end
  return rows
end

local function only_active(rows)
  local out = {}
  for _, l in ipairs(rows) do if l.active then out[#out + 1] = l end end
  return out
end

-- Stall a ticket (hand-offs pass it by) or serve it again; it keeps its place.
local function set_stalled(t, stalled)
  if t.stalled == stalled then return end
  local from, to = 'qs', 'q'
  if stalled then from, to = 'q', 'qs' end
  for _, name in ipairs(t.queues) do
    if redis.call('ZREM', key(from, name), t.id) == 1 then
      redis.call('ZADD', key(to, name), t.seq, t.id)
      moved[name] = true
    end
  end
  if stalled then
    redis.call('HSET', key('t', t.id), 'stalled', '1')
  else
    redis.call('HDEL', key('t', t.id), 'stalled')
  end
  t.stalled = stalled
end

local function set_ticket_expiry(t, at)
  local tkey = key('t', t.id)
  redis.call('HSET', tkey, 'expires_at', fmt(at))
  expire_at(tkey, at)
  for _, name in ipairs(t.queues) do redis.call('ZADD', key('qe', name), 'XX', fmt(at), t.id) end
  t.expires_at = at
end

-- Queue a ticket wanting `wanted` grants of request `r` ({id, names (as asked),
-- occupy, kind, holder}) on every active limit, for process `owner` ({process_id,
-- host, pid}); at `seq` if given (the place it had), else next in arrival order;
-- expiring at `expires` if given, else a lease TTL from now.
local function open_ticket(r, active, owner, wanted, seq, stalled, expires)
  local ttl, queues = nil, {}
  for _, l in ipairs(active) do
    queues[#queues + 1] = l.name
    if not ttl or l.lease_ttl < ttl then ttl = l.lease_ttl end
  end
  ttl = ttl or DEFAULT_TTL
  if not seq then seq = redis.call('HINCRBY', META, 'seq', 1) end
  expires = expires or NOW + ttl
  local tkey = key('t', r.id)
  redis.call('HSET', tkey, 'seq', int(seq), 'process_id', owner.process_id, 'holder', r.holder,
    'host', owner.host, 'pid', owner.pid, 'occupy', r.occupy, 'kind', r.kind,
    'names', join(r.names), 'queues', join(queues), 'lease_ttl', fmt(ttl),
    'created_at', fmt(NOW), 'expires_at', fmt(expires), 'wanted', wanted, 'arrivals', '')
  if stalled then redis.call('HSET', tkey, 'stalled', '1') end
  expire_at(tkey, expires)
  for _, n in ipairs(r.names) do redis.call('SADD', key('n', n), r.id) end
  for _, name in ipairs(queues) do
    redis.call('ZADD', key(stalled and 'qs' or 'q', name), seq, r.id)
    redis.call('ZADD', key('qe', name), fmt(expires), r.id)
    moved[name] = true
  end
  return seq
end

-- Withdraw a ticket from every queue it is in; false if there was none. `t`: the
-- ticket as loaded, if it is (saves reading it again).
local function drop_ticket(ticket_id, t)
  local tkey = key('t', ticket_id)
  local queues, names
  if t then
    queues, names = t.queues, split(t.names)
  else
    local v = redis.call('HMGET', tkey, 'queues', 'names')
    if not v[2] then return false end
    queues, names = split(v[1]), split(v[2])
  end
  for _, name in ipairs(queues) do
    redis.call('ZREM', key('q', name), ticket_id)
    redis.call('ZREM', key('qs', name), ticket_id)
    redis.call('ZREM', key('qe', name), ticket_id)
    touched[name] = true
    moved[name] = true
  end
  for _, name in ipairs(names) do redis.call('SREM', key('n', name), ticket_id) end
  redis.call('DEL', tkey)
  return true
end

-- Remove a queue entry whose ticket hash is gone (expired past the GC backstop).
local function drop_orphan(name, ticket_id)
  redis.call('ZREM', key('q', name), ticket_id)
  redis.call('ZREM', key('qs', name), ticket_id)
  redis.call('ZREM', key('qe', name), ticket_id)
  redis.call('SREM', key('n', name), ticket_id)
  touched[name] = true
  moved[name] = true
end

-- Queue on a limit that now counts (enabled, or created) every waiter naming it.
local function join_waiters(name)
  for _, ticket_id in ipairs(redis.call('SMEMBERS', key('n', name))) do
    local t = load_ticket(ticket_id)
    if not t then
      redis.call('SREM', key('n', name), ticket_id)
    elseif not redis.call('ZSCORE', key('qe', name), ticket_id) then
      redis.call('ZADD', key(t.stalled and 'qs' or 'q', name), t.seq, ticket_id)
      redis.call('ZADD', key('qe', name), fmt(t.expires_at), ticket_id)
      local queues = t.queues
      queues[#queues + 1] = name
      table.sort(queues)
      redis.call('HSET', key('t', ticket_id), 'queues', join(queues))
      moved[name] = true
    end
  end
end

-- --------------------------------------------------------------------- leases

local function load_lease(lease_id)
  local v = redis.call('HMGET', key('lease', lease_id), 'holds', 'expires_at', 'claimed',
    'ticket_id', 'ticket_seq', 'names', 'occupy', 'kind', 'holder', 'host', 'pid',
    'process_id', 'acquired_at', 'lease_ttl', 'ticket_expires')
  if not v[2] then return nil end
  return {id = lease_id, holds = split(v[1]), expires_at = tonumber(v[2]),
          claimed = v[3] ~= '0', ticket_id = v[4] or '', ticket_seq = tonumber(v[5]),
          names = split(v[6]), occupy = tonumber(v[7]), kind = v[8], holder = v[9] or '',
          host = v[10] or '', pid = tonumber(v[11]) or 0, process_id = v[12],
          acquired_at = tonumber(v[13]) or NOW, lease_ttl = tonumber(v[14]) or DEFAULT_TTL,
          ticket_expires = tonumber(v[15])}
end

-- Give back the units one lease holds on one limit (tolerates a missing lease hash);
-- true if it held some.
local function drop_holding(name, lease_id)
  local units = redis.call('HGET', key('h', name), lease_id)
  redis.call('ZREM', key('he', name), lease_id)
  if units then
    redis.call('HDEL', key('h', name), lease_id)
    redis.call('HINCRBY', key('l', name), 'in_use', -tonumber(units))
    touched[name] = true
    return true
  end
  return false
end

-- The next fencing token: a lease is named <ticket id>.<fence>, and every later grant
-- must have a greater fence, so a resource can refuse a holder that lost its lease.
-- Redis may lose the counter with its data (a restart without persistence, or from an
-- older snapshot or AOF) while holders from before the loss still run until their next
-- renewal; a counter started again at 1 would give new holders fences below theirs. So
-- a fence is never below the server clock in microseconds: max(last + 1, TIME in us).
-- Fences run ahead of that clock only by grants made faster than one a microsecond (the
-- grants of one script share its TIME), far less than a restart takes, so after a loss
-- they start above every fence handed out before it, unless the server clock steps back
-- (or a failover lands on a host whose clock is behind) by more than the outage lasted.
local function next_fence()
  local fence = math.max((tonumber(redis.call('HGET', META, 'fence')) or 0) + 1, NOW_US)
  redis.call('HSET', META, 'fence', int(fence))
  return fence
end

-- Take the claim's tokens and units on every active limit, count the grant in their
-- totals, and record its lease, named <ticket id>.<fence>; return the grant as the
-- exchange reply lists it: {ticket id, lease id, names, acquired_at, expires_at,
-- lease_ttl, missing} (false where there is none).
-- claim: {ticket_id, process_id, holder, host, pid, occupy, kind, and if queued: seq,
-- expires (the ticket's)}.
-- `claimed`: the grant goes to the step's caller, whose it is at once (a rate grant
-- then leaves nothing behind); otherwise its lease waits to be claimed and lapses
-- after CLAIM_WINDOW. `queued_since`: when the granted request arrived, if it queued.
local function grant(claim, active, claimed, queued_since, missing)
  local names, ttl = {}, nil
  for _, l in ipairs(active) do
    names[#names + 1] = l.name
    count_grant(l.name, claim.occupy, queued_since)
    if not ttl or l.lease_ttl < ttl then ttl = l.lease_ttl end
    if l.rate and l.burst then
      local tat = math.max(l.tat, NOW) + claim.occupy / l.rate
      redis.call('HSET', key('l', l.name), 'tat', fmt(tat))
      l.tat = tat
    end
  end
  ttl = ttl or DEFAULT_TTL
  local g = {claim.ticket_id, false, join(names), fmt(NOW), false, false, missing or {}}
  if claim.kind == 'rate' and claimed then return g end
  local fence = next_fence()
  local lease_id = claim.ticket_id .. '.' .. int(fence) -- not `.. fence`: '%.14g' rounds it
  local expires = NOW + ttl
  if not claimed then expires = NOW + math.min(ttl, CLAIM_WINDOW) end
  local holds = {}
  local lkey = key('lease', lease_id)
  if claim.kind == 'concurrency' then
    for _, l in ipairs(active) do
      if l.slots then
        holds[#holds + 1] = l.name
        redis.call('HSET', key('h', l.name), lease_id, claim.occupy)
        redis.call('ZADD', key('he', l.name), fmt(expires), lease_id)
        redis.call('HINCRBY', key('l', l.name), 'in_use', claim.occupy)
        l.in_use = l.in_use + claim.occupy
      end
    end
  end
  local fields = {'kind', claim.kind, 'names', join(names), 'holds', join(holds),
    'process_id', claim.process_id, 'holder', claim.holder, 'host', claim.host,
    'pid', claim.pid, 'occupy', claim.occupy, 'lease_ttl', fmt(ttl),
    'acquired_at', fmt(NOW), 'expires_at', fmt(expires)}
  if not claimed then
    for _, v in ipairs({'claimed', '0', 'ticket_id', claim.ticket_id,
                        'ticket_seq', claim.seq and int(claim.seq) or '',
                        'ticket_expires', claim.expires and fmt(claim.expires) or ''}) do
      fields[#fields + 1] = v
    end
  end
  redis.call('HSET', lkey, unpack(fields))
  if not claimed then
    local ukey = key('u', claim.ticket_id)
    redis.call('ZADD', ukey, int(fence), lease_id)
    expire_at(ukey, expires)
  end
  if #holds == 0 then
    -- Nothing indexes a lease without holdings by expiry: Redis drops it once lapsed.
    expire_at(lkey, expires)
  end
  if claim.kind == 'rate' then return g end
  g[2], g[5], g[6] = lease_id, fmt(expires), fmt(ttl)
  return g
end

-- A grant handed to a ticket lapsed unclaimed: the ticket gets it back, keeping its
-- place, stalled (passed by) until its process asks about it again. A ticket gone
-- meanwhile (its last grant was the one handed) is opened again at its place, with
-- the expiry it had: unless that is past, for then its process stopped renewing it
-- (a dead process, as far as a store shared across hosts can tell) and a live one
-- opens it again itself when it asks.
local function lapse(lease)
  local t = load_ticket(lease.ticket_id)
  if t then
    local segments = arrival_list(t)
    table.insert(segments, 1, {lease.acquired_at, 1})
    redis.call('HSET', key('t', t.id), 'wanted', t.wanted + 1,
      'arrivals', arrivals_text(segments))
    set_stalled(t, true)
  elseif lease.ticket_seq and (lease.ticket_expires or NOW + 1) > NOW then
    local active = active_limits(lease.names)
    if #active == 0 then return end
    open_ticket({id = lease.ticket_id, names = lease.names, occupy = lease.occupy,
                 kind = lease.kind, holder = lease.holder},
                active, lease, 1, lease.ticket_seq, true, lease.ticket_expires)
  end
  wakes[lease.ticket_id] = lease.process_id
end

-- Put on record who held a lease's units and when, for `run why`: one entry per limit
-- ("acquired|released|units|lease id|holder"), in the order leases end; the newest
-- HELD_KEEP entries of each limit are kept.
local HELD_KEEP = 100000
local function record_held(lease)
  for _, name in ipairs(lease.holds) do
    local k = key('held', name)
    local n = redis.call('RPUSH', k, fmt(lease.acquired_at) .. '|' .. fmt(NOW) .. '|' ..
      lease.occupy .. '|' .. lease.id .. '|' .. lease.holder)
    if n > HELD_KEEP then redis.call('LTRIM', k, -HELD_KEEP, -1) end
  end
end

-- Delete a lease and every unit it holds; returns its expires_at, or nil if absent.
-- `expired`: the store takes it back because it expired (reclaim, renew, a claim too
-- late): a claimed one counts in the totals' `reclaimed` of each limit it held units
-- of; an unclaimed one gives its grant back to its ticket instead (lapse). Others
-- (withdrawals, reset, delete, a closing process) pass nothing.
local function revoke(lease_id, expired)
  local lease = load_lease(lease_id)
  if not lease then return nil end
  if lease.claimed and lease.kind ~= 'rate' then record_held(lease) end
  local lapsed = expired and lease.expires_at <= NOW
  for _, name in ipairs(lease.holds) do
    if drop_holding(name, lease_id) and lapsed and lease.claimed then count_reclaimed(name) end
  end
  redis.call('DEL', key('lease', lease_id))
  if not lease.claimed and lease.ticket_id ~= '' then
    redis.call('ZREM', key('u', lease.ticket_id), lease_id)
    if lapsed then lapse(lease) end
  end
  return lease.expires_at
end

-- Remove expired leases and tickets on these limits; true if anything went.
local function reclaim(names)
  local any = false
  for _, name in ipairs(names) do
    for _, lease_id in ipairs(redis.call('ZRANGEBYSCORE', key('he', name), '-inf', fmt(NOW))) do
      any = true
      if not revoke(lease_id, true) and drop_holding(name, lease_id) then
        count_reclaimed(name) -- an expired holding whose lease hash is gone
      end
    end
    for _, ticket_id in ipairs(redis.call('ZRANGEBYSCORE', key('qe', name), '-inf', fmt(NOW))) do
      any = true
      if not drop_ticket(ticket_id) then drop_orphan(name, ticket_id) end
    end
  end
  return any
end

-- --------------------------------------------------------------------- hand-off

-- One grant of a ticket's request; the ticket wants one fewer (and goes at none).
-- Updates `t` in place.
local function grant_to_ticket(t, active, claimed)
  local segments = arrival_list(t)
  local arrived = segments[1] and segments[1][1] or t.created_at
  local g = grant({ticket_id = t.id, process_id = t.process_id, holder = t.holder,
                   host = t.host, pid = t.pid, occupy = t.occupy, kind = t.kind, seq = t.seq,
                   expires = t.expires_at},
                  active, claimed, arrived, nil)
  if t.wanted <= 1 then
    drop_ticket(t.id, t)
    t.wanted = 0
    if claimed then ended[t.id] = true end
  else
    t.arrivals = arrivals_text(take_arrivals(segments, 1))
    t.wanted = t.wanted - 1
    redis.call('HSET', key('t', t.id), 'wanted', t.wanted, 'arrivals', t.arrivals)
  end
  return g
end

local function sorted_keys(set)
  local out = {}
  for k in pairs(set) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- One pass over the changed limits: serve each queue's head while it fits.
local function hand_off_pass(queue, moved_now)
  local done = {}
  local i = 1
  while i <= #queue do
    local name = queue[i]
    i = i + 1
    if not done[name] then
      done[name] = true
      local granted_here = false
      while true do
        local seq, ticket_id = head_seq(name)
        if not seq then break end
        local t = load_ticket(ticket_id)
        if not t then
          drop_orphan(name, ticket_id)
        elseif t.expires_at <= NOW then
          drop_ticket(ticket_id, t) -- its waiter stopped renewing: never hand units to the dead
        else
          local here = load_limit(name)
          if not here then break end
          if here.active and t.kind == 'concurrency' and here.slots
              and here.in_use + t.occupy > here.slots then
            if moved_now[name] and t.occupy > here.slots then wakes[ticket_id] = t.process_id end
            break -- no room on this limit: the common case
          end
          -- A ticket in one queue needs nothing more; one in several, all of them.
          local rows = {here}
          if #t.queues > 1 then
            rows = ticket_limits(t)
            for _, l in ipairs(rows) do if l.name == name then here = l end end
          end
          local active = only_active(rows)
          if check_request(t.kind, t.occupy, active) then
            wakes[ticket_id] = t.process_id -- its ask says why; it leaves
            break
          end
          local blocked = blockers(t.kind, t.occupy, active, seq, name, seq)
          if #blocked > 0 then
            -- A new head waiting for a rate token must learn when it is due.
            if granted_here or moved_now[name] then
              for _, b in ipairs(blocked) do
                if b[2] == 'rate' then wakes[ticket_id] = t.process_id end
              end
            end
            break
          end
          local to_caller = CALLER ~= nil and t.process_id == CALLER
          local g = grant_to_ticket(t, active, to_caller)
          if to_caller then mine[#mine + 1] = g else wakes[ticket_id] = t.process_id end
          granted_here = true
          for _, l in ipairs(rows) do
            if l.name ~= name then
              queue[#queue + 1] = l.name -- their queues moved too
              done[l.name] = nil
            end
          end
          -- Full now, with no rate token for a next head to learn about: nothing more here.
          if here.active and not here.rate and here.slots and here.in_use >= here.slots
              and not moved_now[name] then
            break
          end
        end
      end
    end
  end
end

-- Grant waiting tickets that fit now, in arrival order, on every limit this step
-- changed, stopping at each queue's first ticket that cannot be served (strict
-- FIFO); grants change limits again (a served ticket leaves its queues), so passes
-- repeat until nothing changed. Collects whom to wake: tickets handed a grant to
-- claim, and a new head that must learn when its rate token is due or that it can
-- never be served.
local function hand_off()
  while next(touched) ~= nil or next(moved) ~= nil do
    local moved_now = moved
    local work = {}
    for name in pairs(touched) do work[name] = true end
    for name in pairs(moved) do work[name] = true end
    touched, moved = {}, {}
    hand_off_pass(sorted_keys(work), moved_now)
  end
end

-- Finish a step: hand freed units over, publish wake-ups (ticket ids) to other
-- processes, and reply with `result` plus the tickets of the calling process to wake.
local function finish(result)
  hand_off()
  local by_process = {}
  for ticket_id, process_id in pairs(wakes) do
    local ids = by_process[process_id]
    if not ids then ids = {}; by_process[process_id] = ids end
    ids[#ids + 1] = ticket_id
  end
  for process_id, ids in pairs(by_process) do
    if process_id ~= ME then
      redis.call('PUBLISH', P .. ':wake:' .. process_id, cjson.encode(ids))
    end
  end
  result.wake = by_process[ME]
  result.epoch = EPOCH
  result.now = fmt(NOW)
  return cjson.encode(result)
end

local function fail(code, detail)
  detail = detail or {}
  detail.error = code
  return finish(detail)
end
