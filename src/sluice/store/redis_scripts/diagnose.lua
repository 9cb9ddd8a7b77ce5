-- diagnose: read-only facts for `sluice doctor`: schema, limits, leases past expiry.
-- KEYS[1]  P:meta
-- ARGV[1]  caller process id        ARGV[2]  known epoch
-- Reply: {schema, limits, expired_leases}

local expired = 0
local names = redis.call('SMEMBERS', P .. ':limits')
local seen = {}
for _, name in ipairs(names) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', key('he', name), '-inf', fmt(NOW))) do
    if not seen[id] then seen[id] = true; expired = expired + 1 end
  end
end
return reply({schema = tonumber(redis.call('HGET', META, 'schema')), limits = #names,
              expired_leases = expired})
