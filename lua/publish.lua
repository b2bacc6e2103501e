-- publish.lua: makes the units a sharded pool's shard got back (a cancel, a
-- failed write, an expired hold: release.lua and cancel.lua count them in
-- sx.retn instead of the door) claimable, after the caller cleared every
-- other shard's sold-out mark (marks.lua 'clear'): so no shard refuses
-- `sold_out` while a unit is claimable somewhere.
--
-- KEYS[1] meta, [2] left, [3] sx
-- Returns the number of units published (0: none waited, or no state).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local r = tonumber(redis.call('HGET', KEYS[3], 'retn') or '0')
if r <= 0 then
  return 0
end
redis.call('INCRBY', KEYS[2], r)
redis.call('HSET', KEYS[3], 'retn', '0')
redis.call('HINCRBY', KEYS[3], 'ver', 1)
redis.call('HDEL', KEYS[3], 'so')
return r
