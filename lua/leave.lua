-- leave.lua: a queued user leaves the queue before being admitted
-- (redis-queue). The place is skipped at no cost: the drainer passes over
-- an 'L' answer, and the unit the place held goes back where it came from.
--   'W|pidx' (pre-queued): before the freeze, out of the pool's pre-queue
--     count; after it, the unit freeze.lua set aside goes back to the door,
--     unless the pool's pre-queue outnumbered its stock (then the unit stays
--     with the next in drawn order: one loser fewer).
--   'Q|pidx|seq' (queued, no slot yet): the unit goes back to the door.
-- Anything else is kept (a slot allocated is a grant being written: cancel
-- it once granted).
--
-- KEYS[1] meta, [2] ans, [3] queued, then per pool i (0-based): KEYS[4 + i] left
-- ARGV[1] user
-- Returns {'left', answer}, {'kept', answer}, {'none'} (no answer), or
-- {'noinit'} (no state loaded).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'noinit'}
end
local a = redis.call('HGET', KEYS[2], ARGV[1])
if not a then
  return {'none'}
end
local pidx = string.match(a, '^W|(%d+)$')
local seq = '0'
if pidx then
  if not redis.call('HGET', KEYS[1], 'pqs') then
    redis.call('HINCRBY', KEYS[1], 'pqc:' .. pidx, -1)
  else
    if tonumber(redis.call('HGET', KEYS[1], 'pqx:' .. pidx) or '0') > 0 then
      redis.call('HINCRBY', KEYS[1], 'pqx:' .. pidx, -1)
    else
      redis.call('INCR', KEYS[4 + tonumber(pidx)])
    end
    redis.call('DECR', KEYS[3])
  end
else
  pidx, seq = string.match(a, '^Q|(%d+)|(%d+)$')
  if not pidx then
    return {'kept', a}
  end
  redis.call('INCR', KEYS[4 + tonumber(pidx)])
  redis.call('DECR', KEYS[3])
end
local l = 'L|' .. pidx .. '|' .. seq
redis.call('HSET', KEYS[2], ARGV[1], l)
return {'left', l}
