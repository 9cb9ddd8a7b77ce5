-- abandon: withdraw requests: drop their tickets and release any lease granted to them.
-- KEYS[1]  P:meta
-- ARGV[1]  caller process id        ARGV[2]  known epoch
-- ARGV[3..] request ids
-- Reply: {}

for i = 3, #ARGV do
  drop_ticket(ARGV[i])
  revoke(ARGV[i])
end
return reply({})
