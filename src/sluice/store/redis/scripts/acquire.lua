-- acquire: grant a request now, or queue it; a retry first collects a handed-off grant.
-- KEYS[1]  P:meta
-- ARGV[1]  caller process id        ARGV[2]  known epoch ('' if none)
-- ARGV[3]  the request, one JSON array (one argument is cheaper to send than nine):
--          [request id, limit names comma-separated (as asked), occupy,
--           kind ('concurrency' or 'rate'), holder label, missing policy (raise, warn,
--           ignore), seq of its ticket ('' on a first attempt), host, pid]
-- ARGV[4]  'resent' when the client sends this attempt again after a lost reply
-- A grant counts in the totals of its active limits (with its wait if it had a
-- ticket); a grant collected from an earlier hand-off was counted when handed.
-- Reply: {granted, names, acquired_at, lease_id, expires_at, lease_ttl, missing}
--     or {queued, seq, blocked_on, position, retry_in, lease_ttl, missing}
--     or {error = 'not_found', names} / {error = 'rate_without_rate' | 'occupy_too_big', ...}

local R = cjson.decode(ARGV[3])
local request_id = R[1]
local asked = R[2]
local names = split(asked)
local occupy = tonumber(R[3])
local kind = R[4]
local holder = R[5]
local policy = R[6]
local seq = tonumber(R[7])
local host = R[8]
local pid = tonumber(R[9])
local resent = ARGV[4] == 'resent'
if STALE_EPOCH then seq = nil end -- queued before the data was lost: that place means nothing

local rows, missing = {}, {}
for _, name in ipairs(names) do
  local l = load_limit(name)
  if l then rows[#rows + 1] = l else missing[#missing + 1] = name end
end

-- A retry (or an attempt sent again after a lost reply): perhaps this request
-- already holds its units, handed over by a release or granted by the attempt
-- whose reply was lost.
if seq or resent then
  local v = redis.call('HMGET', key('lease', request_id), 'kind', 'names', 'acquired_at',
    'expires_at', 'lease_ttl')
  if v[1] then
    local expires = tonumber(v[4])
    if v[1] == 'concurrency' and expires <= NOW then
      -- Handed over, but its waiter was away past the lease's TTL: the units go
      -- back (an expired lease reclaimed) and the waiter queues again at its old place.
      revoke(request_id, true)
    elseif v[1] == 'rate' then
      redis.call('DEL', key('lease', request_id))
      return reply({granted = true, names = split(v[2]), acquired_at = v[3], missing = missing})
    else
      return reply({granted = true, names = split(v[2]), acquired_at = v[3],
                    lease_id = request_id, expires_at = v[4], lease_ttl = v[5],
                    missing = missing})
    end
  end
end

if #missing > 0 and policy == 'raise' then
  return fail('not_found', {names = missing})
end

table.sort(rows, function(a, b) return a.name < b.name end)
local active = {}
for _, l in ipairs(rows) do if l.active then active[#active + 1] = l end end
for _, l in ipairs(active) do
  if kind == 'rate' and not l.rate then return fail('rate_without_rate', {name = l.name}) end
  local bound = max_occupy(l, kind)
  if bound and occupy > bound then
    return fail('occupy_too_big', {name = l.name, bound = bound,
                                   what = (bound == l.slots and kind == 'concurrency') and 'slots' or 'burst'})
  end
end

local has_ticket, queued_since = false, nil
if seq or resent then
  local own = redis.call('HMGET', key('t', request_id), 'seq', 'created_at')
  if own[1] then has_ticket = true; seq = tonumber(own[1]); queued_since = tonumber(own[2]) end
end

local active_names = {}
for _, l in ipairs(active) do active_names[#active_names + 1] = l.name end
local blocked = blockers(kind, occupy, active, seq)
if #blocked > 0 and reclaim(active_names) then
  -- Something expired in the way: look again with fresh numbers.
  for i, l in ipairs(active) do active[i] = load_limit(l.name) end
  blocked = blockers(kind, occupy, active, seq)
end
local claim = {id = request_id, process_id = ME, holder = holder, host = host,
               pid = pid, occupy = occupy, kind = kind,
               queued_since = has_ticket and (queued_since or NOW) or nil}
if #blocked == 0 then
  if has_ticket then drop_ticket(request_id) end
  local granted = take(claim, active, false)
  granted.missing = missing
  return reply(granted)
end

-- Queue: in exactly the queues of the active limits it names, at its place.
local ttl = nil
for _, l in ipairs(active) do if not ttl or l.lease_ttl < ttl then ttl = l.lease_ttl end end
local expires = NOW + ttl
local tkey = key('t', request_id)
if has_ticket then
  local keep = {}
  for _, n in ipairs(active_names) do keep[n] = true end
  for _, n in ipairs(split(redis.call('HGET', tkey, 'queues'))) do
    if not keep[n] then
      redis.call('ZREM', key('q', n), request_id)
      redis.call('ZREM', key('qe', n), request_id)
      touched[n] = true
      moved[n] = true
    end
  end
  redis.call('HSET', tkey, 'expires_at', fmt(expires), 'queues', join(active_names))
  if not queued_since then redis.call('HSET', tkey, 'created_at', fmt(NOW)) end
else
  if not seq then seq = redis.call('HINCRBY', META, 'seq', 1) end
  redis.call('HSET', tkey, 'seq', string.format('%d', seq), 'process_id', ME, 'holder', holder,
    'host', host, 'pid', pid, 'occupy', occupy, 'kind', kind, 'names', asked,
    'queues', join(active_names), 'lease_ttl', fmt(ttl), 'created_at', fmt(NOW),
    'expires_at', fmt(expires))
  for _, n in ipairs(names) do redis.call('SADD', key('n', n), request_id) end
end
redis.call('PEXPIREAT', tkey, math.floor((expires + GRACE) * 1000))
for _, n in ipairs(active_names) do
  redis.call('ZADD', key('q', n), 'NX', seq, request_id)
  redis.call('ZADD', key('qe', n), fmt(expires), request_id)
end

-- When something that sends no wake-up (a rate token, an expiry) may let it in.
local first = blocked[1][1]
local position = redis.call('ZCOUNT', key('q', first.name), '-inf', '(' .. string.format('%d', seq)) + 1
local soonest = nil
for _, b in ipairs(blocked) do
  local l, why = b[1], b[2]
  local at = nil
  if why == 'rate' then
    at = allow_at(l.tat, l.rate, l.burst, occupy)
  else
    local z = redis.call('ZRANGE', key(why == 'queue' and 'qe' or 'he', l.name), 0, 0, 'WITHSCORES')
    if z[2] then at = tonumber(z[2]) end
  end
  if at and (not soonest or at < soonest) then soonest = at end
end
local retry_in = nil
if soonest then retry_in = fmt(math.max(0.001, soonest - NOW)) end
return reply({queued = true, seq = seq, blocked_on = first.name, position = position,
              retry_in = retry_in, lease_ttl = fmt(ttl), missing = missing})
