-- reset_limit: revoke every lease holding a limit and refill its bucket.
-- KEYS[1]  P:meta
-- ARGV[1]  caller process id        ARGV[2]  known epoch
-- ARGV[3]  name
-- Reply: {revoked = count} or {error = 'not_found'}
-- Its totals stay; the leases it revokes are not counted as reclaimed. Each revoked
-- lease's process is woken with the lease id, so its holder learns at once.

local name = ARGV[3]
local l = load_limit(name)
if not l then return fail('not_found', {names = {name}}) end
local leases = redis.call('HKEYS', key('h', name))
for _, id in ipairs(leases) do
  local process_id = redis.call('HGET', key('lease', id), 'process_id')
  if process_id then wakes[id] = process_id end
  if not revoke(id) then drop_holding(name, id) end
end
redis.call('HSET', key('l', name), 'tat', '0', 'in_use', '0', 'updated_at', fmt(NOW))
touched[name] = true
moved[name] = true
return finish({revoked = #leases})
