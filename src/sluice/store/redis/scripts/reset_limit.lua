-- reset_limit: revoke every lease holding a limit and refill its bucket.
-- KEYS[1]  P:meta
-- ARGV[1]  caller process id        ARGV[2]  known epoch
-- ARGV[3]  name
-- Reply: {revoked = count} or {error = 'not_found'}
-- Its totals stay; the leases it revokes are not counted as reclaimed.

local name = ARGV[3]
local l = load_limit(name)
if not l then return fail('not_found', {names = {name}}) end
local leases = redis.call('HKEYS', key('h', name))
for _, id in ipairs(leases) do
  if not revoke(id) then drop_holding(name, id) end
end
redis.call('HSET', key('l', name), 'tat', '0', 'in_use', '0', 'updated_at', fmt(NOW))
touched[name] = true
moved[name] = true
return finish({revoked = #leases})
