-- replay.lua: puts a dead-lettered redis-queue claim back in the queue if
-- stock is left at the door, else answers it sold_out. The claim kept its
-- queued answer (and arrival number) while it was dead-lettered.
--
-- KEYS[1] ans, KEYS[2] left (of the claim's pool), KEYS[3] queue stream,
-- KEYS[4] queued counter, KEYS[5] dlq stream
-- ARGV[1] user, ARGV[2] pool index, ARGV[3] seq, ARGV[4] dead-letter id
-- Returns 'requeued', 'sold_out' or 'stale' (the answer moved on).
local expected = 'Q|' .. ARGV[2] .. '|' .. ARGV[3]
local a = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('XDEL', KEYS[5], ARGV[4])
if a ~= expected then
  return 'stale'
end
if tonumber(redis.call('GET', KEYS[2]) or '0') <= 0 then
  redis.call('HSET', KEYS[1], ARGV[1], 'R|sold_out|' .. ARGV[3])
  redis.call('DECR', KEYS[4])
  return 'sold_out'
end
redis.call('DECR', KEYS[2])
redis.call('XADD', KEYS[3], '*', 'u', ARGV[1], 'p', ARGV[2], 's', ARGV[3])
return 'requeued'
