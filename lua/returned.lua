-- returned.lua: a sharded redis-lua pool gets back the slot of a cancel
-- its flusher has just written to PostgreSQL (cancel.lua held it back).
-- The unit waits in sx.retn until publish.lua makes it claimable.
--
-- KEYS[1] meta, [2] free, [3] sx, [4] got (here: cancels given back)
-- ARGV[1] the slot, [2] the generation the cancel was decided in, [3] the
-- cancelled grant's code
-- Returns 1 when given back, 0 when this cancel was given back already (a
-- flush delivered twice: the slot may be someone's again), the slot was
-- free already, or the state is gone or of another generation (a rebuild
-- recounted the slot).
local m = redis.call('HMGET', KEYS[1], 'gen', 'exp')
if m[1] ~= ARGV[2] then
  return 0
end
if redis.call('HSETNX', KEYS[4], 'c:' .. ARGV[3], '1') == 0 then
  return 0
end
redis.call('PEXPIREAT', KEYS[4], m[2])
redis.call('HINCRBY', KEYS[3], 'held', -1)
if redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HINCRBY', KEYS[3], 'retn', 1)
redis.call('PEXPIREAT', KEYS[2], m[2])
return 1
