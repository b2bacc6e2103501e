-- marks.lua: a sharded pool's sold-out mark on one shard.
--
-- KEYS[1] meta, [2] left, [3] sx, [4] xf
-- ARGV[1] 'set': mark the pool sold out here if nothing changed since the
--         caller's proof (ARGV[2] = the `ver` it read, ARGV[3] = the
--         generation it was made in) and nothing is left, given back, held
--         back or in flight here;
--         'clear': forget the mark and bump `ver`, so a proof in progress
--         that read this shard before fails (a unit is about to be
--         published elsewhere).
-- Returns 1 when it set or cleared, 0 otherwise (no state, or changed).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if ARGV[1] == 'clear' then
  redis.call('HINCRBY', KEYS[3], 'ver', 1)
  redis.call('HDEL', KEYS[3], 'so')
  return 1
end
local x = redis.call('HMGET', KEYS[3], 'ver', 'retn', 'held')
if (x[1] or '0') ~= ARGV[2] or tonumber(x[2] or '0') > 0 or tonumber(x[3] or '0') > 0
  or redis.call('HGET', KEYS[1], 'gen') ~= ARGV[3]
  or tonumber(redis.call('GET', KEYS[2]) or '1') > 0
  or redis.call('HLEN', KEYS[4]) > 0 then
  return 0
end
redis.call('HSET', KEYS[3], 'so', '1')
return 1
