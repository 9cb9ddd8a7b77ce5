-- inspect_limit: a limit with its live holders, its waiters in order, next token time
-- and totals.
-- KEYS[1]  P:meta
-- ARGV[1]  caller process id        ARGV[2]  known epoch
-- ARGV[3]  name
-- Reply: {limit, holders = [[lease, units, holder, host, pid, since, expires]],
--         waiters = [[ticket, occupy, holder, host, pid, since, position, count]] in
--         line order (stalled tickets too; position counts every request ahead), next_token_in,
--         totals = {grants, granted_units, timeouts, reclaimed, wait_seconds,
--                   queued_waits = [13 per wait bucket]}} (totals' numbers as strings)

local name = ARGV[3]
if not load_limit(name) then return fail('not_found', {names = {name}}) end
reclaim({name})
hand_off() -- what the reclaim freed goes to the waiters before we look

local l = load_limit(name)
local holders = {}
local held = redis.call('HGETALL', key('h', name))
for i = 1, #held, 2 do
  local id = held[i]
  local v = redis.call('HMGET', key('lease', id), 'holder', 'host', 'pid', 'acquired_at',
    'expires_at')
  if v[4] then
    holders[#holders + 1] = {id, tonumber(held[i + 1]), v[1], v[2], tonumber(v[3]), v[4], v[5]}
  end
end
table.sort(holders, function(a, b)
  local x, y = tonumber(a[6]), tonumber(b[6])
  if x ~= y then return x < y end
  return a[1] < b[1]
end)
-- Every ticket in line, stalled or not, by seq; each stands for `wanted` requests.
local line = {}
for _, which in ipairs({'q', 'qs'}) do
  local z = redis.call('ZRANGE', key(which, name), 0, -1, 'WITHSCORES')
  for i = 1, #z, 2 do line[#line + 1] = {z[i], tonumber(z[i + 1])} end
end
table.sort(line, function(a, b) return a[2] < b[2] end)
local waiters = {}
local position = 1
for _, entry in ipairs(line) do
  local id = entry[1]
  local v = redis.call('HMGET', key('t', id), 'occupy', 'holder', 'host', 'pid', 'created_at',
    'wanted')
  if v[1] then
    local wanted = tonumber(v[6]) or 1
    waiters[#waiters + 1] = {id, tonumber(v[1]), v[2], v[3], tonumber(v[4]), v[5], position,
                             wanted}
    position = position + wanted
  end
end
local token_in = nil
if l.rate and l.burst then token_in = fmt(math.max(0, allow_at(l.tat, l.rate, l.burst, 1) - NOW)) end
return finish({limit = limit_reply(l), holders = holders, waiters = waiters,
              next_token_in = token_in, totals = totals_reply(name)})
