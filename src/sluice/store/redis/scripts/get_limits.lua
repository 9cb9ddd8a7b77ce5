-- get_limits: read limits, by name or all of them (sorted by name).
-- KEYS[1]  P:meta
-- ARGV[1]  caller process id        ARGV[2]  known epoch
-- ARGV[3..] names (none: every limit)
-- Reply: {limits = [...], missing = [names not found]}

local names = {}
if #ARGV >= 3 then
  for i = 3, #ARGV do names[#names + 1] = ARGV[i] end
else
  names = redis.call('SMEMBERS', P .. ':limits')
  table.sort(names)
end
local out, missing = {}, {}
for _, name in ipairs(names) do
  local l = load_limit(name)
  if l then out[#out + 1] = limit_reply(l) else missing[#missing + 1] = name end
end
return finish({limits = out, missing = missing})
