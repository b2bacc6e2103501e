-- allocate.lua: the redis-queue drainer gives queued claims their slots, in
-- the order given (arrival order). Idempotent: a claim that already has a
-- slot keeps it, so a batch retried after a crash allocates nothing twice.
-- A slot beyond the pool's stock is never handed out: a queued claim that
-- finds every slot taken (drift let it in at the door) becomes a refusal
-- in waiting, 'X|seq', which the drainer makes durable like any other.
--
-- KEYS[1] ans, KEYS[2] meta, KEYS[3] queued, then per pool i (0-based):
--   KEYS[4 + 2i] hw, KEYS[5 + 2i] free
-- A claim turned into a refusal leaves the queued count at once (like a
-- refusal at the door), so whoever makes it durable promotes it without
-- counting it down.
-- ARGV[1] number of pools n, ARGV[2..n+1] each pool's stock as the caller
--   loaded it (meta's 'last:<pool>' wins: an operator's restock moves it
--   first), then pairs:
--   user, fresh code
-- Returns the state's generation, then the users' answers after
-- allocation, in order ('' if none); {'paused'} while an operator paused
-- the campaign (nothing allocated: the queue waits).
local m = redis.call('HMGET', KEYS[2], 'exp', 'gen', 'paused')
if m[3] == '1' then
  return {'paused'}
end
local np = tonumber(ARGV[1])
local out = {m[2] or '0'}
for i = np + 2, #ARGV, 2 do
  local user = ARGV[i]
  local a = redis.call('HGET', KEYS[1], user)
  if a and string.sub(a, 1, 1) == 'Q' then
    local pidx, seq, slot = string.match(a, '^Q|(%d+)|(%d+)|?(%d*)')
    if slot == '' then
      local k = 4 + 2 * tonumber(pidx)
      local f = redis.call('ZPOPMIN', KEYS[k + 1])
      if f[1] then
        slot = f[1]
      elseif tonumber(redis.call('GET', KEYS[k]) or '0')
          < tonumber(redis.call('HGET', KEYS[2], 'last:' .. pidx) or ARGV[2 + tonumber(pidx)]) then
        slot = tostring(redis.call('INCR', KEYS[k]))
      else
        slot = nil
      end
      if slot then
        a = 'Q|' .. pidx .. '|' .. seq .. '|' .. slot .. '|' .. ARGV[i + 1]
      else
        a = 'X|' .. seq
        redis.call('DECR', KEYS[3])
        -- A drawn place beyond the stock refused: one claimant fewer
        -- waiting beyond it, so a pre-queued user leaving after this
        -- frees a unit at the door (leave.lua). Erring low is safe: a
        -- unit at the door too many is refused in its turn.
        local x = tonumber(redis.call('HGET', KEYS[2], 'pqx:' .. pidx) or '0')
        if x > 0 and tonumber(seq) <= tonumber(redis.call('HGET', KEYS[2], 'pqn') or '0') then
          redis.call('HINCRBY', KEYS[2], 'pqx:' .. pidx, -1)
        end
      end
      redis.call('HSET', KEYS[1], user, a)
    end
  end
  out[#out + 1] = a or ''
end
return out
