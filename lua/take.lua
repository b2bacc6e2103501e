-- take.lua: a dry shard of a sharded pool receives the slots another
-- shard gave it (give.lua). Idempotent: a transfer completed twice (its
-- caller and a helper racing, or a retry) adds its slots once.
--
-- KEYS[1] meta, [2] left, [3] free, [4] sx, [5] got (transfers received)
-- ARGV[1] transfer id, [2] the generation the transfer was given in,
-- [3..] the slots
--
-- Returns 1 when the slots were added, 0 when this transfer was already
-- received, -1 without a whole state of that generation (the campaign is
-- being rebuilt, which recounts every slot from PostgreSQL).
local m = redis.call('HMGET', KEYS[1], 'gen', 'exp')
if not m[1] or m[1] ~= ARGV[2] or not redis.call('GET', KEYS[2]) then
  return -1
end
if redis.call('HSETNX', KEYS[5], ARGV[1], '1') == 0 then
  return 0
end
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[3], ARGV[i], ARGV[i])
end
redis.call('INCRBY', KEYS[2], #ARGV - 2)
-- Stock arrived: whoever is proving the pool sold out must look again.
redis.call('HINCRBY', KEYS[4], 'ver', 1)
redis.call('HDEL', KEYS[4], 'so')
for i = 3, 5 do
  redis.call('PEXPIREAT', KEYS[i], m[2])
end
return 1
