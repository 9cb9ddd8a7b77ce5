-- forget_process: a process closing normally withdraws its tickets and gives back its
-- leases, and the grants handed to its tickets that it never claimed.
-- KEYS[1]  P:meta
-- ARGV[1]  caller process id        ARGV[2]  known epoch
-- ARGV[3]  number of ticket ids T   ARGV[4..3+T] ticket ids   ARGV[4+T..] lease ids
-- Reply: {}
-- Nothing here counts in the totals: the process did not die, it left. Its unclaimed
-- grants go back to the limits, not to its tickets (which are gone with it).

local count = tonumber(ARGV[3])
for i = 4, 3 + count do
  local ticket_id = ARGV[i]
  if redis.call('HGET', key('t', ticket_id), 'process_id') == ME then drop_ticket(ticket_id) end
  for _, lease_id in ipairs(redis.call('ZRANGE', key('u', ticket_id), 0, -1)) do
    if redis.call('HGET', key('lease', lease_id), 'process_id') == ME then revoke(lease_id) end
  end
end
for i = 4 + count, #ARGV do revoke(ARGV[i]) end
redis.call('DEL', key('x', ME))
return finish({})
