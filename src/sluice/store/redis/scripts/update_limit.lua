-- update_limit: write a limit's new definition, keeping holders and waiters.
-- KEYS[1]  P:meta
-- ARGV[1]  caller process id        ARGV[2]  known epoch
-- ARGV[3]  name     ARGV[4] slots ('')   ARGV[5] rate ('')   ARGV[6] burst ('')
-- ARGV[7]  lease_ttl                ARGV[8] '1' if rate or burst changed (refill the bucket)
-- ARGV[9]  the version the new definition was computed from
-- Reply: {limit = {...}} or {error = 'not_found'} or {error = 'conflict'} (changed meanwhile)

local name = ARGV[3]
local l = load_limit(name)
if not l then return fail('not_found', {names = {name}}) end
if l.version ~= tonumber(ARGV[9]) then return fail('conflict', {name = name}) end
local lkey = key('l', name)
redis.call('HSET', lkey, 'slots', ARGV[4], 'rate', ARGV[5], 'burst', ARGV[6],
  'lease_ttl', ARGV[7], 'version', l.version + 1, 'updated_at', fmt(NOW))
if ARGV[8] == '1' then redis.call('HSET', lkey, 'tat', '0') end
touched[name] = true
moved[name] = true -- its head may now be served, or wait for another token
return finish({limit = limit_reply(load_limit(name))})
