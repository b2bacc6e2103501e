-- give.lua: a sharded pool's shard gives stock to a dry shard (or, asked
-- for 0, reports what it holds: the sold-out check's read).
--
-- KEYS[1] meta, [2] left, [3] hw, [4] free, [5] sx (ver, so, retn),
-- [6] xf (transfers given, not yet confirmed: id -> 'to|slot,slot,...')
-- ARGV[1] transfer id, [2] recipient shard, [3] most units wanted,
-- [4] the generation the caller's state had, [5] the last slot of this
-- shard's range
--
-- Returns {'noinit'} without a whole state here, {'stale', gen} when this
-- state is of another generation, {'gave', slot...} (taken from this
-- shard as a claim would take them, recorded in xf until the recipient
-- confirms), or {'none', ver, retn, out, left, held} when it gives nothing.
-- Gives at most half of what is left (at least one), so two dry shards
-- do not take turns emptying each other.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'noinit'}
end
local m = redis.call('HMGET', KEYS[1], 'gen', 'exp')
if (m[1] or '0') ~= ARGV[4] then
  return {'stale', m[1] or '0'}
end
local left = redis.call('GET', KEYS[2])
local hw = redis.call('GET', KEYS[3])
if not left or not hw then
  -- A partial state (see claim.lua): forget it, the caller rebuilds.
  redis.call('DEL', KEYS[1])
  return {'noinit'}
end
left = tonumber(left)
hw = tonumber(hw)
local hi = tonumber(ARGV[5])
local want = math.min(tonumber(ARGV[3]), math.max(1, math.floor(left / 2)))
local slots = {}
while #slots < want and left > 0 do
  local f = redis.call('ZPOPMIN', KEYS[4])
  if f[1] then
    slots[#slots + 1] = f[1]
  elseif hw < hi then
    hw = redis.call('INCR', KEYS[3])
    slots[#slots + 1] = tostring(hw)
  else
    -- Drift: the counter says stock, the range says none (claim.lua).
    left = 0
    redis.call('SET', KEYS[2], '0', 'KEEPTTL')
    break
  end
  left = left - 1
end
if #slots == 0 then
  local x = redis.call('HMGET', KEYS[5], 'ver', 'retn', 'held')
  return {'none', x[1] or '0', x[2] or '0', tostring(redis.call('HLEN', KEYS[6])), tostring(left),
    x[3] or '0'}
end
redis.call('DECRBY', KEYS[2], #slots)
redis.call('HSET', KEYS[6], ARGV[1], ARGV[2] .. '|' .. table.concat(slots, ','))
if m[2] then
  redis.call('PEXPIREAT', KEYS[6], m[2])
end
local r = {'gave'}
for _, s in ipairs(slots) do
  r[#r + 1] = s
end
return r
