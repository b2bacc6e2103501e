-- release.lua: the compensating action. Returns a reservation's stock and
-- slot when its durable write failed for good, provided the user's answer
-- is still the one the caller saw (so a release runs at most once).
--
-- KEYS[1] meta    (for the expiry to put on a newly created free set)
-- KEYS[2] ans
-- KEYS[3] left    of the reservation's pool
-- KEYS[4] free    of the reservation's pool
-- KEYS[5] queued  counter, changed by ARGV[5]
-- KEYS[6] pending zset of gate reservations; a released user leaves it
-- ARGV[1] user
-- ARGV[2] expected answer
-- ARGV[3] replacement answer; '' deletes it (the user may claim again)
-- ARGV[4] slot to free; '' when none was allocated
-- ARGV[5] delta for KEYS[5]
-- Returns 1 when released, 0 when the answer had changed.
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[6], ARGV[1])
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
redis.call('INCR', KEYS[3])
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[4])
  local exp = redis.call('HGET', KEYS[1], 'exp')
  if exp then
    redis.call('PEXPIREAT', KEYS[4], exp)
  end
end
local d = tonumber(ARGV[5])
if d ~= 0 then
  redis.call('INCRBY', KEYS[5], d)
end
return 1
