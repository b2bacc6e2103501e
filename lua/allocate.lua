-- allocate.lua: the redis-queue drainer gives queued claims their slots, in
-- the order given (arrival order). Idempotent: a claim that already has a
-- slot keeps it, so a batch retried after a crash allocates nothing twice.
--
-- KEYS[1] ans, KEYS[2] meta, then per pool i (0-based):
--   KEYS[3 + 2i] hw, KEYS[4 + 2i] free
-- ARGV pairs: user, fresh code
-- Returns the users' answers after allocation, in order ('' if none).
local exp = redis.call('HGET', KEYS[2], 'exp')
local out = {}
for i = 1, #ARGV, 2 do
  local user = ARGV[i]
  local a = redis.call('HGET', KEYS[1], user)
  if a and string.sub(a, 1, 1) == 'Q' then
    local pidx, seq, slot = string.match(a, '^Q|(%d+)|(%d+)|?(%d*)')
    if slot == '' then
      local k = 3 + 2 * tonumber(pidx)
      local f = redis.call('ZPOPMIN', KEYS[k + 1])
      if f[1] then
        slot = f[1]
      else
        slot = tostring(redis.call('INCR', KEYS[k]))
      end
      a = 'Q|' .. pidx .. '|' .. seq .. '|' .. slot .. '|' .. ARGV[i + 1]
      redis.call('HSET', KEYS[1], user, a)
    end
  end
  out[#out + 1] = a or ''
end
return out
