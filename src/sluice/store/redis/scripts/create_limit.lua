-- create_limit: create a limit with a full rate bucket (or, to ensure, return the existing one).
-- KEYS[1]  P:meta
-- ARGV[1]  caller process id        ARGV[2]  known epoch
-- ARGV[3]  name     ARGV[4] slots ('' for none)   ARGV[5] rate ('')   ARGV[6] burst ('')
-- ARGV[7]  active ('1' or '0')      ARGV[8] lease_ttl
-- ARGV[9]  '1' to ensure (return the stored limit if the name is taken), '0' to create
-- Reply: {limit = {...}, created = bool} or {error = 'exists'}
-- A new limit's totals start at zero (totals left by a Sluice that did not delete them go).

local name = ARGV[3]
local existing = load_limit(name)
if existing then
  if ARGV[9] == '1' then return finish({limit = limit_reply(existing), created = false}) end
  return fail('exists', {name = name})
end
redis.call('HSET', key('l', name), 'slots', ARGV[4], 'rate', ARGV[5], 'burst', ARGV[6],
  'active', ARGV[7], 'lease_ttl', ARGV[8], 'tat', '0', 'in_use', '0', 'version', '1',
  'created_at', fmt(NOW), 'updated_at', fmt(NOW))
redis.call('DEL', key('tot', name))
redis.call('SADD', P .. ':limits', name)
if ARGV[7] == '1' then join_waiters(name) end
return finish({limit = limit_reply(load_limit(name)), created = true})
