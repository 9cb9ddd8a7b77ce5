-- release: give back leases and hand their units to the waiters next in line.
-- KEYS[1]  P:meta
-- ARGV[1]  caller process id        ARGV[2]  known epoch
-- ARGV[3..] lease ids
-- Reply: {found = [bool per lease: true if it was live until now]}
-- A lease released after its expiry, not yet reclaimed, counts as reclaimed in the
-- totals of the limits it held; one released in time counts nothing.

local found = {}
for i = 3, #ARGV do
  local expires = revoke(ARGV[i], true)
  found[#found + 1] = expires ~= nil and expires > NOW
end
return reply({found = found})
