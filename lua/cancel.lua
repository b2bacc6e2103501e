-- cancel.lua: turns a granted answer into a cancelled one and returns its
-- slot to the pool (a sharded redis-lua pool: once the cancel is durable,
-- see below).
--
-- KEYS[1] meta, KEYS[2] ans, KEYS[3] left, KEYS[4] free (of ARGV[4]'s pool),
-- KEYS[5] outbox (redis-lua only; the flusher applies the cancellation in
-- stream order, after the grant it cancels)
-- ARGV[1] user
-- ARGV[2] 'write-behind' to append to the outbox (redis-lua), else ''
-- ARGV[3] the code PostgreSQL cancelled, or '' to accept any
-- ARGV[4] the pool index the caller took keys for
-- KEYS[6] sx of that pool; ARGV[5] '1' for a sharded pool: the unit waits
-- in sx.retn until publish.lua makes it claimable (see there)
-- Returns {'noinit'}, {'none'}, {'already', a}, {'not_granted', a},
-- {'other', a} (code or pool differs) or {'cancelled', a}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'noinit'}
end
local a = redis.call('HGET', KEYS[2], ARGV[1])
if not a then
  return {'none'}
end
local kind = string.sub(a, 1, 1)
if kind == 'C' then
  return {'already', a}
end
if kind ~= 'G' then
  return {'not_granted', a}
end
-- G|pidx|slot|code|seq
local pidx, slot, code = string.match(a, '^G|(%d+)|(%d+)|([^|]+)|')
if (ARGV[3] ~= '' and code ~= ARGV[3]) or pidx ~= ARGV[4] then
  return {'other', a}
end
local c = 'C' .. string.sub(a, 2)
redis.call('HSET', KEYS[2], ARGV[1], c)
local m = redis.call('HMGET', KEYS[1], 'exp', 'gen')
if ARGV[5] == '1' and ARGV[2] == 'write-behind' then
  -- A sharded pool writing behind: the slot may leave this shard (give.lua)
  -- and be granted through another shard's outbox, which could reach
  -- PostgreSQL before this cancel does. It comes back only once the
  -- flusher has written the cancel (returned.lua); meanwhile `held` counts
  -- it, so no shard proves the pool sold out.
  redis.call('HINCRBY', KEYS[6], 'held', 1)
  redis.call('XADD', KEYS[5], '*', 'op', 'c', 'u', ARGV[1], 'c', code, 'g', m[2] or '0',
    'p', pidx, 'sl', slot)
  return {'cancelled', c}
end
-- Stock comes back only with a slot that was not free already: a cancel
-- never adds stock it did not take (a drifted state stays no worse).
if redis.call('ZADD', KEYS[4], slot, slot) == 1 then
  if ARGV[5] == '1' then
    redis.call('HINCRBY', KEYS[6], 'retn', 1)
  else
    redis.call('INCR', KEYS[3])
  end
end
if m[1] then
  redis.call('PEXPIREAT', KEYS[4], m[1])
end
if ARGV[2] == 'write-behind' then
  redis.call('XADD', KEYS[5], '*', 'op', 'c', 'u', ARGV[1], 'c', code, 'g', m[2] or '0')
end
return {'cancelled', c}
