-- Shared library of the Redis store's step scripts; prepended to each step file.
--
-- Every step script is called with:
--   KEYS[1]  the deployment's meta hash, "<{tag}>:meta". Every other key the
--            script touches is derived from its prefix "<{tag}>", so all keys
--            share one hash tag and a Redis Cluster keeps them on one shard.
--   ARGV[1]  the calling process's id (wake-ups for it are returned, not published)
--   ARGV[2]  the store epoch the caller knows ('' if none yet)
-- and answers one JSON document (see `reply`). Times are seconds since the
-- epoch on the Redis server's clock (TIME).
--
-- Keys (P is the prefix):
--   P:meta          hash   epoch, seq (ticket arrival counter), schema
--   P:limits        set    limit names
--   P:l:NAME        hash   slots rate burst active lease_ttl tat in_use version created_at updated_at
--   P:h:NAME        hash   lease id -> units held on NAME
--   P:he:NAME       zset   lease id -> expires_at, for leases holding NAME
--   P:q:NAME        zset   ticket id -> seq: NAME's FIFO queue
--   P:qe:NAME       zset   ticket id -> expires_at, for tickets queued on NAME
--   P:n:NAME        set    ids of tickets that named NAME (queued on it or not)
--   P:lease:ID      hash   kind names holds process_id holder host pid occupy lease_ttl acquired_at expires_at
--   P:t:ID          hash   seq process_id holder host pid occupy kind names queues lease_ttl created_at expires_at
--   P:tot:NAME      hash   NAME's totals, counted by the steps that cause them: grants
--                          granted_units timeouts reclaimed wait_seconds, and qw0 .. qw12:
--                          grants that had queued, per wait bucket (WAIT_BUCKETS below);
--                          no TTL, like P:l:NAME; deleted (and cleared on create) with NAME
--   channel P:wake:PROCESS_ID   comma-separated ticket ids to look at again
--
-- Lua scripts are not rolled back on error: every step validates before it
-- writes, and the helpers below keep the indexes consistent with each other.

local META = KEYS[1]
local P = string.sub(META, 1, -6)
local ME = ARGV[1]
local KNOWN_EPOCH = ARGV[2]
local GRACE = 60 -- seconds a lapsed lease or ticket hash outlives its expiry (GC backstop)
local DEFAULT_TTL = 30
-- Upper bounds (seconds) of the wait buckets, as sluice.limits.model.WAIT_BUCKETS; a
-- last, unbounded bucket follows. Bucket i (0-based) is totals field 'qw' .. i.
local WAIT_BUCKETS = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0}

local NOW
do
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function key(kind, id) return P .. ':' .. kind .. ':' .. id end
local function fmt(x) return string.format('%.17g', x) end

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
local EPOCH = redis.call('HGET', META, 'epoch')
if not EPOCH then
  EPOCH = fmt(NOW)
  redis.call('HSET', META, 'epoch', EPOCH, 'schema', '1')
end
local STALE_EPOCH = KNOWN_EPOCH ~= '' and KNOWN_EPOCH ~= EPOCH

-- What this step changed: limits whose capacity or queue changed, limits whose
-- queue head may have changed, and tickets to wake (id -> process id).
local touched, moved, wakes = {}, {}, {}
-- Concurrency grants handed over in this step: ticket id -> {names, acquired_at,
-- expires_at, lease_ttl}, sent with the wake-up so the waiter need not ask again.
local handed = {}

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

-- --------------------------------------------------------------------- totals

-- The bucket (0-based, as sluice.limits.model.wait_bucket) a wait falls in.
local function wait_bucket(seconds)
  for i, bound in ipairs(WAIT_BUCKETS) do
    if seconds <= bound then return i - 1 end
  end
  return #WAIT_BUCKETS
end

-- Count a grant of `occupy` units in a limit's totals; `queued_since` is the
-- created_at of its ticket if it queued (nil for a grant at once, which waited 0
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

local function impossible(kind, occupy, active)
  for _, l in ipairs(active) do
    if kind == 'rate' and not l.rate then return true end
    local bound = max_occupy(l, kind)
    if bound and occupy > bound then return true end
  end
  return false
end

-- GCRA, exactly as sluice/limits/gcra.py.
local function allow_at(tat, rate, burst, n) return tat + (n - burst) / rate end

local function blockers(kind, occupy, active, seq)
  local out = {}
  for _, l in ipairs(active) do
    local head = head_seq(l.name)
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

-- --------------------------------------------------------------------- leases

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

-- Delete a lease and every unit it holds; returns its expires_at, or nil if absent.
-- `expired`: the store takes it back because it expired (reclaim, renew, a release
-- or collection too late); if it is indeed past its expiry, each limit it held units
-- of counts it in its totals' `reclaimed`. Releases, abandon, reset and delete pass nothing.
local function revoke(lease_id, expired)
  local v = redis.call('HMGET', key('lease', lease_id), 'holds', 'expires_at')
  if not v[2] then return nil end
  local expires = tonumber(v[2])
  local lapsed = expired and expires <= NOW
  for _, name in ipairs(split(v[1])) do
    if drop_holding(name, lease_id) and lapsed then count_reclaimed(name) end
  end
  redis.call('DEL', key('lease', lease_id))
  return expires
end

-- Take the claim's tokens and units on every active limit, count the grant in their
-- totals, and record its lease. A rate grant is recorded only when handed to a
-- sleeping waiter (record_rate). claim.queued_since: its ticket's created_at, if it queued.
local function take(claim, active, record_rate)
  local names = {}
  local ttl = nil
  for _, l in ipairs(active) do
    names[#names + 1] = l.name
    count_grant(l.name, claim.occupy, claim.queued_since)
    if not ttl or l.lease_ttl < ttl then ttl = l.lease_ttl end
    if l.rate and l.burst then
      local tat = math.max(l.tat, NOW) + claim.occupy / l.rate
      redis.call('HSET', key('l', l.name), 'tat', fmt(tat))
      l.tat = tat
    end
  end
  ttl = ttl or DEFAULT_TTL
  local granted = {granted = true, names = names, acquired_at = fmt(NOW)}
  if claim.kind == 'rate' and not record_rate then return granted end
  local expires = NOW + ttl
  local holds = {}
  local lkey = key('lease', claim.id)
  if claim.kind == 'concurrency' then
    for _, l in ipairs(active) do
      if l.slots then
        holds[#holds + 1] = l.name
        redis.call('HSET', key('h', l.name), claim.id, claim.occupy)
        redis.call('ZADD', key('he', l.name), fmt(expires), claim.id)
        redis.call('HINCRBY', key('l', l.name), 'in_use', claim.occupy)
        l.in_use = l.in_use + claim.occupy
      end
    end
  end
  redis.call('HSET', lkey, 'kind', claim.kind, 'names', join(names), 'holds', join(holds),
    'process_id', claim.process_id, 'holder', claim.holder, 'host', claim.host,
    'pid', claim.pid, 'occupy', claim.occupy, 'lease_ttl', fmt(ttl),
    'acquired_at', fmt(NOW), 'expires_at', fmt(expires))
  if #holds == 0 then
    -- Nothing indexes a lease without holdings by expiry: Redis drops it once lapsed.
    redis.call('PEXPIREAT', lkey, math.floor((expires + GRACE) * 1000))
  end
  if claim.kind == 'rate' then return granted end
  granted.lease_id = claim.id
  granted.expires_at = fmt(expires)
  granted.lease_ttl = fmt(ttl)
  return granted
end

-- --------------------------------------------------------------------- tickets

-- Withdraw a ticket from every queue it is in; false if there was none.
local function drop_ticket(ticket_id)
  local tkey = key('t', ticket_id)
  local v = redis.call('HMGET', tkey, 'queues', 'names')
  if not v[2] then return false end
  for _, name in ipairs(split(v[1])) do
    redis.call('ZREM', key('q', name), ticket_id)
    redis.call('ZREM', key('qe', name), ticket_id)
    touched[name] = true
    moved[name] = true
  end
  for _, name in ipairs(split(v[2])) do redis.call('SREM', key('n', name), ticket_id) end
  redis.call('DEL', tkey)
  return true
end

-- Remove a queue entry whose ticket hash is gone (expired past the GC backstop).
local function drop_orphan(name, ticket_id)
  redis.call('ZREM', key('q', name), ticket_id)
  redis.call('ZREM', key('qe', name), ticket_id)
  redis.call('SREM', key('n', name), ticket_id)
  touched[name] = true
  moved[name] = true
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

local function load_ticket(ticket_id)
  local v = redis.call('HMGET', key('t', ticket_id), 'seq', 'process_id', 'holder', 'host',
    'pid', 'occupy', 'kind', 'queues', 'expires_at', 'names', 'created_at')
  if not v[1] then return nil end
  return {id = ticket_id, seq = tonumber(v[1]), process_id = v[2], holder = v[3], host = v[4],
          pid = tonumber(v[5]), occupy = tonumber(v[6]), kind = v[7], queues = split(v[8]),
          expires_at = tonumber(v[9]), names = split(v[10]),
          created_at = tonumber(v[11]) or NOW}
end

-- Queue on a limit that now counts (enabled, or created) every waiter naming it.
local function join_waiters(name)
  for _, ticket_id in ipairs(redis.call('SMEMBERS', key('n', name))) do
    local t = load_ticket(ticket_id)
    if not t then
      redis.call('SREM', key('n', name), ticket_id)
    elseif not redis.call('ZSCORE', key('q', name), ticket_id) then
      redis.call('ZADD', key('q', name), t.seq, ticket_id)
      redis.call('ZADD', key('qe', name), fmt(t.expires_at), ticket_id)
      local queues = t.queues
      queues[#queues + 1] = name
      table.sort(queues)
      redis.call('HSET', key('t', ticket_id), 'queues', join(queues))
      moved[name] = true
    end
  end
end

-- --------------------------------------------------------------------- hand-off

local function sorted_keys(set)
  local out = {}
  for k in pairs(set) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- Grant waiting tickets that fit now, in arrival order, on every limit this step
-- changed, stopping at the first that cannot be served (strict FIFO); collect
-- whom to wake: granted tickets, and a new head that must learn when its rate
-- token is due or that it can never be served.
local function hand_off()
  local work = {}
  for name in pairs(touched) do work[name] = true end
  for name in pairs(moved) do work[name] = true end
  local queue = sorted_keys(work)
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
          drop_ticket(ticket_id) -- its waiter stopped renewing: never hand units to the dead
        else
          local here = load_limit(name)
          if not here then break end
          if here.active and t.kind == 'concurrency' and here.slots
              and here.in_use + t.occupy > here.slots then
            if moved[name] and t.occupy > here.slots then wakes[ticket_id] = t.process_id end
            break -- no room on this limit: the common case
          end
          local rows = {}
          if #t.queues == 1 then rows = {here} else
            for _, n in ipairs(t.queues) do
              local l = load_limit(n)
              if l then rows[#rows + 1] = l end
            end
          end
          local active = {}
          for _, l in ipairs(rows) do if l.active then active[#active + 1] = l end end
          if impossible(t.kind, t.occupy, active) then
            wakes[ticket_id] = t.process_id
            break
          end
          local blocked = blockers(t.kind, t.occupy, active, seq)
          if #blocked > 0 then
            local new_head = granted_here or moved[name]
            local rate = false
            for _, b in ipairs(blocked) do if b[2] == 'rate' then rate = true end end
            if new_head and rate then wakes[ticket_id] = t.process_id end
            break
          end
          local full = here.active and not here.rate and here.slots and t.kind == 'concurrency'
            and here.in_use + t.occupy >= here.slots
          drop_ticket(ticket_id)
          local g = take({id = ticket_id, process_id = t.process_id, holder = t.holder,
                          host = t.host, pid = t.pid, occupy = t.occupy, kind = t.kind,
                          queued_since = t.created_at},
                         active, true)
          if g.lease_id then
            handed[ticket_id] = {join(g.names), g.acquired_at, g.expires_at, g.lease_ttl}
          end
          wakes[ticket_id] = t.process_id
          granted_here = true
          for _, l in ipairs(rows) do
            if l.name ~= name then
              queue[#queue + 1] = l.name
              done[l.name] = nil
            end
          end
          if full then break end -- full now, and no rate token for a new head to wait on
        end
      end
    end
  end
end

-- Finish a step: hand freed units over, publish wake-ups to other processes,
-- and reply with `result` plus the tickets of the calling process to wake.
-- A wake-up is {w = [ticket ids], g = {ticket id: grant}}: the grants handed to
-- those tickets travel with it (a waiter may still ask the store instead).
local function reply(result)
  if next(touched) ~= nil or next(moved) ~= nil or next(wakes) ~= nil then hand_off() end
  local by_process = {}
  for ticket_id, process_id in pairs(wakes) do
    local message = by_process[process_id]
    if not message then message = {w = {}, g = {}}; by_process[process_id] = message end
    message.w[#message.w + 1] = ticket_id
    message.g[ticket_id] = handed[ticket_id]
  end
  for process_id, message in pairs(by_process) do
    if process_id ~= ME then
      redis.call('PUBLISH', P .. ':wake:' .. process_id, cjson.encode(message))
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
  return reply(detail)
end
