#!lua flags=no-writes
-- held_spans: who held these limits' units at some time in [since, until]: the ended
-- leases on record (entries released at or after `since`) and the leases held now.
-- Runs WITHOUT _lib.lua (which may write): it changes nothing.
-- KEYS[1]  P:meta
-- ARGV[1]  since    ARGV[2]  until    ARGV[3..]  limit names
-- Reply: {name = {ended = ["acquired|released|units|lease id|holder" ...],
--                 held = [[lease id, units, holder, acquired_at] ...]}}

local P = string.sub(KEYS[1], 1, -6)
local since, till = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV do
  local name = ARGV[i]
  local k = P .. ':held:' .. name
  -- Entries are in release order: find the first released at or after `since`.
  local lo, hi = 0, redis.call('LLEN', k)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local entry = redis.call('LINDEX', k, mid)
    local released = tonumber(string.match(entry, '^[^|]*|([^|]*)|'))
    if released < since then lo = mid + 1 else hi = mid end
  end
  local ended = {}
  for _, entry in ipairs(redis.call('LRANGE', k, lo, -1)) do
    if tonumber(string.match(entry, '^([^|]*)|')) <= till then ended[#ended + 1] = entry end
  end
  local held = {}
  local units = redis.call('HGETALL', P .. ':h:' .. name)
  for j = 1, #units, 2 do
    local v = redis.call('HMGET', P .. ':lease:' .. units[j], 'holder', 'acquired_at', 'claimed')
    if v[2] and v[3] ~= '0' and tonumber(v[2]) <= till then
      held[#held + 1] = {units[j], tonumber(units[j + 1]), v[1] or '', v[2]}
    end
  end
  out[name] = {ended = ended, held = held}
end
return cjson.encode(out)
