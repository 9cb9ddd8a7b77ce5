-- renew: extend leases and tickets by their TTL; report those that are gone.
-- KEYS[1]  P:meta
-- ARGV[1]  caller process id        ARGV[2]  known epoch
-- ARGV[3]  number of lease ids L    ARGV[4..3+L] lease ids    ARGV[4+L..] ticket ids
-- Reply: {lost_leases = [...], lost_tickets = [...], expires = {lease id: expires_at}}
-- A lease found expired is reclaimed here and counted in its limits' totals. A renewed
-- ticket that was stalled (a grant handed to it lapsed) is served again: its process
-- shows life.

local count = tonumber(ARGV[3])
local lost_leases, lost_tickets, expires = {}, {}, {}
for i = 4, 3 + count do
  local id = ARGV[i]
  local lkey = key('lease', id)
  local v = redis.call('HMGET', lkey, 'expires_at', 'lease_ttl', 'holds')
  if not v[1] or tonumber(v[1]) <= NOW then
    -- Expired but not yet reclaimed is lost too, and final: reclaim it now.
    lost_leases[#lost_leases + 1] = id
    revoke(id, true)
  else
    local at = NOW + tonumber(v[2])
    redis.call('HSET', lkey, 'expires_at', fmt(at))
    local holds = split(v[3])
    if #holds == 0 then expire_at(lkey, at) end
    for _, name in ipairs(holds) do
      redis.call('ZADD', key('he', name), 'XX', fmt(at), id)
    end
    expires[id] = fmt(at)
  end
end
for i = 4 + count, #ARGV do
  local id = ARGV[i]
  local t = load_ticket(id)
  if not t or t.expires_at <= NOW then
    lost_tickets[#lost_tickets + 1] = id
    drop_ticket(id)
  else
    set_ticket_expiry(t, NOW + t.lease_ttl)
    set_stalled(t, false)
  end
end
return finish({lost_leases = lost_leases, lost_tickets = lost_tickets, expires = expires})
