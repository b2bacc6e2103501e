-- repair.lua: the reconciler's fix of one pool's counters, applied only if
-- nothing moved since the reconciler read them (compare-and-set), so a
-- repair never races a claim or a cancellation.
--
-- KEYS[1] meta, KEYS[2] seq, KEYS[3] left, KEYS[4] free
-- ARGV[1] seq as observed, ARGV[2] left as observed, ARGV[3] size of the
-- free set as observed, ARGV[4] the correct left, ARGV[5] the pool's index,
-- ARGV[6] the stock the correction was computed for, ARGV[7..] the correct
-- free slots
-- Returns 1 when repaired, 0 when the state moved or bounds the pool by
-- another stock (a restock between the reads: try later), -1 when the
-- state is gone (rebuild instead).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local last = redis.call('HGET', KEYS[1], 'last:' .. ARGV[5])
if last and last ~= ARGV[6] then
  return 0
end
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1]
  or (redis.call('GET', KEYS[3]) or '0') ~= ARGV[2]
  or redis.call('ZCARD', KEYS[4]) ~= tonumber(ARGV[3]) then
  return 0
end
redis.call('SET', KEYS[3], ARGV[4], 'KEEPTTL')
redis.call('DEL', KEYS[4])
for i = 7, #ARGV do
  redis.call('ZADD', KEYS[4], ARGV[i], ARGV[i])
end
if #ARGV >= 7 then
  local exp = redis.call('HGET', KEYS[1], 'exp')
  if exp then
    redis.call('PEXPIREAT', KEYS[4], exp)
  end
end
return 1
