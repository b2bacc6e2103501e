-- refresh.lua: keeps an open-ended campaign's keys alive. Campaigns without
-- closes_at live as long as they exist, so their keys get a sliding expiry
-- that the worker pushes forward long before it is reached (an expiry is
-- never set in the past).
--
-- KEYS[1] meta, then every other key of the campaign (missing ones are
-- skipped)
-- ARGV[1] new expiry (ms since epoch), ARGV[2] refresh only if the current
-- expiry is before this instant (ms)
-- Returns 1 when pushed forward, 0 when not needed or no state.
local exp = redis.call('HGET', KEYS[1], 'exp')
if not exp or tonumber(exp) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'exp', ARGV[1])
for i = 1, #KEYS do
  redis.call('PEXPIREAT', KEYS[i], ARGV[1])
end
return 1
