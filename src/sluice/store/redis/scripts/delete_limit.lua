-- delete_limit: delete a limit; refuse while leases hold it unless forced.
-- KEYS[1]  P:meta
-- ARGV[1]  caller process id        ARGV[2]  known epoch
-- ARGV[3]  name                     ARGV[4]  '1' to force (revoke its leases)
-- Reply: {} or {error = 'not_found'} or {error = 'busy', holders = count}
-- Its totals (P:tot:NAME) go with it; leases it revokes are not counted as reclaimed.
-- Each revoked lease's process is woken with the lease id, so its holder learns at once.

local name = ARGV[3]
local l = load_limit(name)
if not l then return fail('not_found', {names = {name}}) end
reclaim({name})
local leases = redis.call('HKEYS', key('h', name))
if #leases > 0 and ARGV[4] ~= '1' then return fail('busy', {name = name, holders = #leases}) end
for _, id in ipairs(leases) do
  local process_id = redis.call('HGET', key('lease', id), 'process_id')
  if process_id then wakes[id] = process_id end
  if not revoke(id) then drop_holding(name, id) end
end
touched[name] = nil
moved[name] = nil
-- Its waiters' tickets are withdrawn and they are woken to look again: they get
-- LimitNotFound, or (missing="ignore") queue anew without it.
for _, which in ipairs({'q', 'qs'}) do
  for _, ticket_id in ipairs(redis.call('ZRANGE', key(which, name), 0, -1)) do
    local process_id = redis.call('HGET', key('t', ticket_id), 'process_id')
    if process_id then wakes[ticket_id] = process_id end
    drop_ticket(ticket_id)
  end
end
touched[name] = nil
moved[name] = nil
redis.call('DEL', key('l', name), key('h', name), key('he', name), key('q', name), key('qs', name),
  key('qe', name), key('tot', name), key('held', name))
redis.call('SREM', P .. ':limits', name)
return finish({})
