-- replay.lua: puts a dead-lettered redis-queue claim back in the queue if
-- stock is left at the door, else turns it into a refusal in waiting
-- ('X|seq', which the caller makes durable, then promotes). While
-- dead-lettered the claim's answer is 'D|pidx|seq' (shown as queued, its
-- arrival number kept, out of the queued count); only that answer is
-- replayed, so a dead letter listed twice is replayed once.
--
-- KEYS[1] ans, KEYS[2] left (of the claim's pool), KEYS[3] queue stream,
-- KEYS[4] queued counter, KEYS[5] dlq stream, KEYS[6] meta
-- ARGV[1] user, ARGV[2] pool index, ARGV[3] seq, ARGV[4] dead-letter id
-- Returns {'requeued'}, {'sold_out', gen}, {'stale'} (the answer moved on)
-- or {'noinit'} (the state is not loaded: nothing is touched, replay again
-- once a claim or the worker has rebuilt it; the rebuild keeps dead letters).
if redis.call('EXISTS', KEYS[6]) == 0 then
  return {'noinit'}
end
local expected = 'D|' .. ARGV[2] .. '|' .. ARGV[3]
local a = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('XDEL', KEYS[5], ARGV[4])
if a ~= expected then
  return {'stale'}
end
if tonumber(redis.call('GET', KEYS[2]) or '0') <= 0 then
  redis.call('HSET', KEYS[1], ARGV[1], 'X|' .. ARGV[3])
  return {'sold_out', redis.call('HGET', KEYS[6], 'gen') or '0'}
end
redis.call('DECR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], 'Q|' .. ARGV[2] .. '|' .. ARGV[3])
redis.call('XADD', KEYS[3], '*', 'u', ARGV[1], 'p', ARGV[2], 's', ARGV[3])
redis.call('INCR', KEYS[4])
return {'requeued'}
