-- admin_record: put an admin action on a limit's audit list, stamped with the server's
-- clock. Run right after the action's own script succeeded (sluice/store/redis/audit.py).
-- Runs WITHOUT _lib.lua: it touches no limit, lease or queue.
-- KEYS[1]  P:meta
-- ARGV[1]  the limit's name
-- ARGV[2]  the record as JSON, without its time
-- ARGV[3]  records kept per limit (sluice.store.audit.ADMIN_KEEP)
-- Writes:  P:admin:NAME  list, newest first, of "<time>|<json>"; trimmed to ARGV[3]
--          entries; no TTL, and kept when the limit is deleted.
-- Reply:   the time recorded (seconds since the epoch, as text)

local P = string.sub(KEYS[1], 1, -6)
local t = redis.call('TIME')
local now = string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
local k = P .. ':admin:' .. ARGV[1]
redis.call('LPUSH', k, now .. '|' .. ARGV[2])
redis.call('LTRIM', k, 0, tonumber(ARGV[3]) - 1)
return now
