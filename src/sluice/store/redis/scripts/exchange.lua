-- exchange: everything one process has for the store at one moment, as ONE step:
-- withdrawals, releases, the hand-off of what they freed, asks, new requests, the
-- final hand-off, then where each of the caller's waiting tickets stands.
-- KEYS[1]  P:meta
-- ARGV[1]  caller process id        ARGV[2]  known epoch ('' if none)
-- ARGV[3]  the batch, one JSON object:
--          {x = exchange id (unique per process), h = host, p = pid,
--           w = [[ticket id, count (-1: all), limit timed out on ('' if none)]],
--           r = [lease ids to release],
--           a = [[ticket id, seq, count, epoch the seq belongs to, request]],
--           q = [requests]}
--          request = [request id, [names as asked], occupy, kind ('concurrency' or
--                     'rate'), holder, missing policy ('raise', 'warn', 'ignore'),
--                     count, ticket id to join ('' for none)]
-- ARGV[4]  'resent' when the client sends the same batch again after a lost reply:
--          if this process's last exchange had that id, its stored reply is returned
--          and nothing is done again (P:x:PROCESS keeps it for 60 s)
-- Reply: {released = {lease id: bool}, grants = [[ticket id, lease id, names
--         (comma-separated), acquired_at, expires_at, lease_ttl, [missing]]] (false
--         where none: a rate grant has no lease), queued = {ticket id: [seq, blocked_on,
--         position, retry_in (false: only when woken), lease_ttl, wanted, [missing]]},
--         refused = {request or ticket id: {error = 'not_found', names} or
--         {error = 'rate_without_rate' | 'occupy_too_big', ...}}, joined = {request id:
--         ticket id}, missing = {request id: [names]}, gone = [ticket ids of the caller
--         served to the end or withdrawn in this step, with nothing left handed to them],
--         wake, epoch, now}
-- Grants made to the caller are claimed (its at once); hand-offs to other processes'
-- tickets wait to be claimed by their asks (see _lib.lua's grant and lapse).

CALLER = ME
local B = cjson.decode(ARGV[3])
local XKEY = key('x', ME)
if ARGV[4] == 'resent' then
  local stored = redis.call('GET', XKEY)
  if stored then
    local cut = string.find(stored, '\n', 1, true)
    if cut and string.sub(stored, 1, cut - 1) == B.x then return string.sub(stored, cut + 1) end
  end
end

local OWNER = {process_id = ME, host = B.h, pid = B.p}
local released, queued, refused, joined, missing_of = {}, {}, {}, {}, {}
local waiting, waiting_order = {}, {} -- ticket id -> request id naming what is missing

local function request_of(raw)
  return {id = raw[1], names = raw[2], occupy = tonumber(raw[3]), kind = raw[4],
          holder = raw[5], missing = raw[6], count = tonumber(raw[7]),
          join = raw[8] ~= '' and raw[8] or nil}
end

local function wait(ticket_id, request_id)
  if not waiting[ticket_id] then waiting_order[#waiting_order + 1] = ticket_id end
  waiting[ticket_id] = request_id
end

-- The caller's unclaimed grants of a ticket, oldest first.
local function unclaimed(ticket_id)
  local out = {}
  for _, lease_id in ipairs(redis.call('ZRANGE', key('u', ticket_id), 0, -1)) do
    local lease = load_lease(lease_id)
    if not lease then
      redis.call('ZREM', key('u', ticket_id), lease_id)
    elseif lease.process_id == ME and not lease.claimed then
      out[#out + 1] = lease
    end
  end
  return out
end

-- --------------------------------------------------------------------- withdrawals

-- Take back wanted grants; what the ticket no longer wants comes, beyond that, out of
-- the grants handed to it and not yet claimed (they go back, never used).
local function withdraw(w)
  local ticket_id, count, timed_out_on = w[1], tonumber(w[2]), w[3]
  if count < 0 then count = nil end
  local t = load_ticket(ticket_id)
  local wanted = (t and t.process_id == ME) and t.wanted or 0
  local take = count and math.min(count, wanted) or wanted
  if take > 0 then
    if take >= t.wanted then
      drop_ticket(t.id)
    else
      redis.call('HSET', key('t', t.id), 'wanted', t.wanted - take,
        'arrivals', arrivals_text(take_arrivals(arrival_list(t), take)))
    end
  end
  local beyond = count and count - take
  if not beyond or beyond > 0 then
    local leases = unclaimed(ticket_id)
    local n = #leases
    if beyond then n = math.min(n, beyond) end
    for i = #leases, #leases - n + 1, -1 do revoke(leases[i].id) end -- the newest first
  end
  ended[ticket_id] = true
  if timed_out_on ~= '' and redis.call('EXISTS', key('l', timed_out_on)) == 1 then
    local n = count or 1
    if n == 0 then n = 1 end
    redis.call('HINCRBY', key('tot', timed_out_on), 'timeouts', n)
  end
end

-- Free a lease: true if it was held until now. One released after its expiry, not
-- yet reclaimed, counts as reclaimed in the totals of the limits it held.
local function release(lease_id)
  local lease = load_lease(lease_id)
  if not lease then return false end
  if lease.claimed and lease.kind ~= 'rate' then record_held(lease) end
  local late = lease.expires_at <= NOW
  for _, name in ipairs(lease.holds) do
    if drop_holding(name, lease_id) and late then count_reclaimed(name) end
  end
  redis.call('DEL', key('lease', lease_id))
  if not lease.claimed and lease.ticket_id ~= '' then
    redis.call('ZREM', key('u', lease.ticket_id), lease_id)
  end
  return not late
end

-- --------------------------------------------------------------------- requests

-- The active limits a request waits on, or nil (refused, nothing changed).
local function valid(r)
  local rows, missing, seen = {}, {}, {}
  for _, name in ipairs(r.names) do
    if not seen[name] then
      seen[name] = true
      local l = load_limit(name)
      if l then rows[#rows + 1] = l else missing[#missing + 1] = name end
    end
  end
  if #missing > 0 and r.missing == 'raise' then
    refused[r.id] = {error = 'not_found', names = missing}
    return nil
  end
  table.sort(rows, function(a, b) return a.name < b.name end)
  local active = only_active(rows)
  local err = check_request(r.kind, r.occupy, active)
  if err then
    refused[r.id] = err
    return nil
  end
  if #missing > 0 then missing_of[r.id] = missing end
  return active
end

local function names_of(rows)
  local out = {}
  for _, l in ipairs(rows) do out[#out + 1] = l.name end
  return out
end

-- Grant the caller's own ticket as many times as it wants and can be served now.
local function serve(t, rows)
  while t.wanted > 0 do
    local active = only_active(rows)
    if #blockers(t.kind, t.occupy, active, t.seq) > 0 then return end
    mine[#mine + 1] = grant_to_ticket(t, active, true)
  end
end

-- Serve one of the caller's tickets as far as it can be now; the rest waits.
local function wait_or_serve(t, request_id)
  local rows = ticket_limits(t)
  local active = only_active(rows)
  if #active > 0 then
    local blocked = blockers(t.kind, t.occupy, active, t.seq)
    if #blocked > 0 and reclaim(names_of(active)) then
      t = load_ticket(t.id) -- a lapse may have given it a grant back
      if not t then return end
      rows = ticket_limits(t)
      active = only_active(rows)
      blocked = blockers(t.kind, t.occupy, active, t.seq)
    end
    if #blocked > 0 then
      wait(t.id, request_id)
      return
    end
  end
  -- Nothing in the way (or, every limit it waits on disabled, nothing to wait on).
  serve(t, rows)
  wait(t.id, request_id)
end

-- Add the request to the ticket it names, if that ticket waits for the same request
-- of this process and nobody queued after it on any of its limits; the ticket, or nil.
local function join_ticket(r)
  local t = load_ticket(r.join)
  if not t or t.process_id ~= ME or t.wanted <= 0 or t.names ~= join(r.names)
      or t.occupy ~= r.occupy or t.kind ~= r.kind or t.holder ~= r.holder then
    return nil
  end
  for _, name in ipairs(t.queues) do
    for _, which in ipairs({'q', 'qs'}) do
      local last = redis.call('ZRANGE', key(which, name), -1, -1, 'WITHSCORES')
      if last[2] and tonumber(last[2]) > t.seq then return nil end
    end
  end
  local segments = arrival_list(t)
  local last = segments[#segments]
  if last and NOW - last[1] <= ARRIVALS_JOIN_WINDOW then
    last[2] = last[2] + r.count -- arrived together, as far as waits tell: one segment
  else
    segments[#segments + 1] = {NOW, r.count}
  end
  t.wanted = t.wanted + r.count
  t.arrivals = arrivals_text(segments)
  redis.call('HSET', key('t', t.id), 'wanted', t.wanted, 'arrivals', t.arrivals)
  set_ticket_expiry(t, NOW + t.lease_ttl)
  return t
end

local function request(r)
  local active = valid(r)
  if not active then return end
  if r.join then
    local t = join_ticket(r)
    if t then
      joined[r.id] = t.id
      wait_or_serve(t, r.id)
      return
    end
  end
  local claim = {ticket_id = r.id, process_id = ME, holder = r.holder, host = OWNER.host,
                 pid = OWNER.pid, occupy = r.occupy, kind = r.kind}
  local count = r.count
  while count > 0 do
    local blocked = blockers(r.kind, r.occupy, active, nil)
    if #blocked > 0 then
      -- Something expired in the way? Look again with fresh numbers.
      local stale = false
      for _, b in ipairs(blocked) do if b[2] ~= 'queue' then stale = true end end
      if stale and reclaim(names_of(active)) then
        active = active_limits(names_of(active))
        blocked = blockers(r.kind, r.occupy, active, nil)
      end
    end
    if #blocked > 0 then break end
    mine[#mine + 1] = grant(claim, active, true, nil, missing_of[r.id])
    count = count - 1
  end
  if count == 0 then return end
  open_ticket(r, active, OWNER, count)
  wait(r.id, r.id)
end

-- --------------------------------------------------------------------- asks

-- The grants handed to one of the caller's tickets: claimed now, if still live.
local function claim_grants(ticket_id)
  local lapsed = {}
  local claimed = 0
  for _, lease in ipairs(unclaimed(ticket_id)) do
    if lease.expires_at <= NOW then
      lapsed[#lapsed + 1] = lease.id
    else
      claimed = claimed + 1
      local g = {ticket_id, false, join(lease.names), fmt(lease.acquired_at), false, false, {}}
      redis.call('ZREM', key('u', ticket_id), lease.id)
      if lease.kind == 'rate' then
        redis.call('DEL', key('lease', lease.id))
      else
        local expires = NOW + lease.lease_ttl
        local lkey = key('lease', lease.id)
        redis.call('HSET', lkey, 'claimed', '1', 'expires_at', fmt(expires))
        for _, name in ipairs(lease.holds) do
          redis.call('ZADD', key('he', name), 'XX', fmt(expires), lease.id)
        end
        if #lease.holds == 0 then expire_at(lkey, expires) end
        g[2], g[5], g[6] = lease.id, fmt(expires), fmt(lease.lease_ttl)
      end
      mine[#mine + 1] = g
    end
  end
  for _, lease_id in ipairs(lapsed) do revoke(lease_id, true) end -- too late: back to the ticket
  return claimed
end

local function ask(a)
  local ticket_id, seq, count, epoch = a[1], tonumber(a[2]), tonumber(a[3]), a[4]
  local r = request_of(a[5])
  local claimed = claim_grants(ticket_id)
  local t = load_ticket(ticket_id)
  if t and t.process_id == ME then
    local err = check_request(r.kind, r.occupy, only_active(ticket_limits(t)))
    if err then -- a change made it impossible: it leaves the line
      drop_ticket(t.id)
      refused[t.id] = err
      return
    end
    set_stalled(t, false)
    set_ticket_expiry(t, NOW + t.lease_ttl)
    wait_or_serve(t, r.id)
    return
  end
  if t or count - claimed <= 0 then return end
  -- Gone (expired, or its last grant lapsed and went): open it again at its place,
  -- unless that place belongs to an incarnation of the data that was lost.
  local active = valid(r)
  if not active then return end
  if epoch ~= EPOCH or seq <= 0 then seq = nil end
  open_ticket(r, active, OWNER, count - claimed, seq)
  wait_or_serve(load_ticket(r.id), r.id)
end

-- --------------------------------------------------------------------- where a ticket stands

-- Grants wanted by, and the soonest expiry of, the tickets ahead of `seq` on a limit.
local function ahead(name, seq)
  local wanted, soonest = 0, nil
  for _, which in ipairs({'q', 'qs'}) do
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', key(which, name), '-inf', '(' .. int(seq))) do
      local v = redis.call('HMGET', key('t', id), 'wanted', 'expires_at')
      if v[2] then
        wanted = wanted + (tonumber(v[1]) or 1)
        local at = tonumber(v[2])
        if not soonest or at < soonest then soonest = at end
      end
    end
  end
  return wanted, soonest
end

-- Say where a ticket of the caller waits, and when to look again unwoken: when
-- something that sends no wake-up (a rate token, an expiry) may let it in.
local function report(t, request_id)
  local active = only_active(ticket_limits(t))
  local blocked = blockers(t.kind, t.occupy, active, t.seq)
  local first = blocked[1] and blocked[1][1] or active[1]
  local seen = {}
  local soonest = nil
  for _, b in ipairs(blocked) do
    local l, why, at = b[1], b[2], nil
    if why == 'rate' then
      at = allow_at(l.tat, l.rate, l.burst, t.occupy)
    elseif why == 'queue' then
      local wanted
      wanted, at = ahead(l.name, t.seq)
      seen[l.name] = wanted
    else
      local z = redis.call('ZRANGE', key('he', l.name), 0, 0, 'WITHSCORES')
      if z[2] then at = tonumber(z[2]) end
    end
    if at and (not soonest or at < soonest) then soonest = at end
  end
  local retry_in = false
  if soonest then retry_in = fmt(math.max(0.001, soonest - NOW)) end
  if #blocked == 0 then retry_in = fmt(0.001) end -- it can be served (it is stalled): look again
  local position = 1
  if first then position = 1 + (seen[first.name] or ahead(first.name, t.seq)) end
  queued[t.id] = {t.seq, first and first.name or '', position, retry_in, fmt(t.lease_ttl),
                  t.wanted, missing_of[request_id] or {}}
end

-- --------------------------------------------------------------------- the step

for _, w in ipairs(B.w) do withdraw(w) end
for _, lease_id in ipairs(B.r) do released[lease_id] = release(lease_id) end
hand_off() -- what was freed goes to those already waiting, first
for _, a in ipairs(B.a) do ask(a) end
for _, raw in ipairs(B.q) do request(request_of(raw)) end
hand_off()
for _, ticket_id in ipairs(waiting_order) do
  local t = load_ticket(ticket_id)
  if t then report(t, waiting[ticket_id]) end
end
-- The caller's tickets served to the end or withdrawn here, and gone with nothing
-- handed to them: it need not remember them any longer.
local gone = {}
for _, ticket_id in ipairs(sorted_keys(ended)) do
  local left = redis.call('EXISTS', key('t', ticket_id), key('u', ticket_id))
  if not queued[ticket_id] and left == 0 then gone[#gone + 1] = ticket_id end
end
local reply = finish({released = released, grants = mine, queued = queued, refused = refused,
                      joined = joined, missing = missing_of, gone = gone})
redis.call('SET', XKEY, B.x .. '\n' .. reply, 'PX', 60000)
return reply
