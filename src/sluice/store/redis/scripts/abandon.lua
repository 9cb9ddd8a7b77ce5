-- abandon: withdraw requests: drop their tickets and release any lease granted to them.
-- KEYS[1]  P:meta
-- ARGV[1]  caller process id        ARGV[2]  known epoch
-- ARGV[3]  the limit a request gave up queueing behind (AcquireTimeout), '' if none:
--          its totals count one timeout, if the limit exists
-- ARGV[4]  number of request ids N  ARGV[5..4+N] request ids
-- ARGV[5+N] 'resent' when the client sends the step again after a lost reply: the
--          timeout then counts only if a request was still there to withdraw
-- Reply: {}
-- A lease withdrawn here is not counted as reclaimed, even if it had expired.

local timed_out_on = ARGV[3]
local count = tonumber(ARGV[4])
local found = false
for i = 5, 4 + count do
  if drop_ticket(ARGV[i]) then found = true end
  if revoke(ARGV[i]) then found = true end
end
if timed_out_on ~= '' and (found or ARGV[5 + count] ~= 'resent')
    and redis.call('EXISTS', key('l', timed_out_on)) == 1 then
  redis.call('HINCRBY', key('tot', timed_out_on), 'timeouts', 1)
end
return reply({})
