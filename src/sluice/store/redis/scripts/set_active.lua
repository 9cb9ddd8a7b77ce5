-- set_active: enable or disable a limit.
-- KEYS[1]  P:meta
-- ARGV[1]  caller process id        ARGV[2]  known epoch
-- ARGV[3]  name                     ARGV[4]  '1' to enable, '0' to disable
-- Reply: {limit = {...}} or {error = 'not_found'}

local name = ARGV[3]
local l = load_limit(name)
if not l then return fail('not_found', {names = {name}}) end
redis.call('HSET', key('l', name), 'active', ARGV[4], 'version', l.version + 1,
  'updated_at', fmt(NOW))
if ARGV[4] == '1' and not l.active then join_waiters(name) end
touched[name] = true
moved[name] = true
return finish({limit = limit_reply(load_limit(name))})
