-- lease.lua: takes or keeps a stream's lease, so one worker at a time
-- consumes a campaign's outbox or queue.
--
-- KEYS[1] the lease
-- ARGV[1] this worker's name, ARGV[2] the lease's time to live (ms)
-- Returns 2 when newly taken, 1 when kept (extended), 0 when another
-- worker holds it.
local v = redis.call('GET', KEYS[1])
if v == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
