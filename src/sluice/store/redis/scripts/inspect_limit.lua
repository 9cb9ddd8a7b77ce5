-- inspect_limit: a limit with its live holders, its waiters in order, next token time
-- and totals.
-- KEYS[1]  P:meta
-- ARGV[1]  caller process id        ARGV[2]  known epoch
-- ARGV[3]  name
-- Reply: {limit, holders = [[lease, units, holder, host, pid, since, expires]],
--         waiters = [[ticket, occupy, holder, host, pid, since]], next_token_in,
--         totals = {grants, granted_units, timeouts, reclaimed, wait_seconds,
--                   queued_waits = [13 per wait bucket]}} (totals' numbers as strings)

local name = ARGV[3]
if not load_limit(name) then return fail('not_found', {names = {name}}) end
reclaim({name})
hand_off() -- what the reclaim freed goes to the waiters before we look
touched, moved = {}, {}
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
local waiters = {}
for _, id in ipairs(redis.call('ZRANGE', key('q', name), 0, -1)) do
  local v = redis.call('HMGET', key('t', id), 'occupy', 'holder', 'host', 'pid', 'created_at')
  if v[1] then
    waiters[#waiters + 1] = {id, tonumber(v[1]), v[2], v[3], tonumber(v[4]), v[5]}
  end
end
local token_in = nil
if l.rate and l.burst then token_in = fmt(math.max(0, allow_at(l.tat, l.rate, l.burst, 1) - NOW)) end
return reply({limit = limit_reply(l), holders = holders, waiters = waiters,
              next_token_in = token_in, totals = totals_reply(name)})
