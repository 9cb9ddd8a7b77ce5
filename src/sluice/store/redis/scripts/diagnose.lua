#!lua flags=no-writes
-- diagnose: read-only facts for `sluice doctor`: schema version, limits, leases past expiry.
-- Runs WITHOUT _lib.lua (which may write): it changes nothing, not even the epoch.
-- KEYS[1]  P:meta
-- Reply: {schema (or null when the deployment is unused), limits, expired_leases, now}

local P = string.sub(KEYS[1], 1, -6)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cutoff = string.format('%.17g', now)
local expired, seen = 0, {}
local names = redis.call('SMEMBERS', P .. ':limits')
for _, name in ipairs(names) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':he:' .. name, '-inf', cutoff)) do
    if not seen[id] then seen[id] = true; expired = expired + 1 end
  end
end
return cjson.encode({schema = tonumber(redis.call('HGET', KEYS[1], 'schema')),
                     limits = #names, expired_leases = expired})
