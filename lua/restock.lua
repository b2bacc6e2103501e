-- restock.lua: an operator's change of pools' stock, carried to an
-- unsharded campaign's Redis state (docs/ARCHITECTURE.md, "Operator
-- controls"). All or nothing: every pool is checked before any changes.
-- Idempotent: a pool already at its new stock is left as it is.
--
-- A raise adds the new units to the door; new slots continue the
-- numbering (the high-water mark is untouched). A lower takes its units
-- from the door only: refused when fewer are left there (the rest are
-- granted, reserved or queued), or when a slot above the new stock is
-- held; released slots above it are dropped and the high-water mark
-- brought down to it, so no slot above it is ever handed out.
--
-- A raise's units go to the door. With a fair start's pre-queue that
-- outnumbered the stock, the drainer gives the new slots to the next drawn
-- claimants first (they are ahead in the queue), so arrivals after the
-- opening who took those units at the door are queued, then refused in
-- their turn: a queued answer is not final, and no unit is lost. (Giving
-- the units to 'pqx' here instead was tried and removed: 'pqx' is not
-- kept exact by cancellations, and a stale one would swallow a raise.)
--
-- KEYS[1] meta, KEYS[2] outbox (redis-lua's write-behind stream), KEYS[3]
--   the campaign's rebuild lock, then per pool i (0-based): KEYS[4 + 3i]
--   left, KEYS[5 + 3i] hw, KEYS[6 + 3i] free
-- ARGV[1] the caller's token on the rebuild lock, ARGV[2] number of pools
--   n, then per pool i: ARGV[3 + 2i] its new stock ('' leaves the pool
--   alone), ARGV[4 + 2i] the stock the caller last knew (used when meta has
--   no 'last:i': a state loaded before restocks)
--
-- Returns {'done'} when applied (or nothing to do), {'lost'} when the
-- caller no longer holds the rebuild lock (nothing changed: another change
-- or a rebuild may be under way), {'nostate'} without a whole loaded state
-- (a partial one is forgotten, as claim.lua does; whoever loads it reads
-- PostgreSQL), {'short', i, left, was} when pool i has fewer than the
-- lowered units left at the door, or {'slot', i, slot} when pool i's slot
-- `slot`, above the new stock, is held -- or, in redis-lua, was handed out
-- and its history is still in the outbox (PostgreSQL drops a grant above
-- its pool's stock: the flush must land first).
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return {'lost'}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'nostate'}
end
local n = tonumber(ARGV[2])
local plan = {}
for i = 0, n - 1 do
  local want = ARGV[3 + 2 * i]
  if want ~= '' then
    want = tonumber(want)
    local was = tonumber(redis.call('HGET', KEYS[1], 'last:' .. i) or ARGV[4 + 2 * i])
    local k = 4 + 3 * i
    local left = redis.call('GET', KEYS[k])
    local hw = redis.call('GET', KEYS[k + 1])
    if not left or not hw then
      redis.call('DEL', KEYS[1])
      return {'nostate'}
    end
    left, hw = tonumber(left), tonumber(hw)
    if want < was then
      local d = was - want
      if left < d then
        return {'short', tostring(i), tostring(left), tostring(was)}
      end
      if hw > want then
        if redis.call('XLEN', KEYS[2]) > 0 then
          return {'slot', tostring(i), tostring(hw)}
        end
        -- Every slot in want+1..hw must be free (released).
        local free = redis.call('ZRANGEBYSCORE', KEYS[k + 2], want + 1, hw)
        if #free < hw - want then
          local seen = {}
          for _, s in ipairs(free) do
            seen[tonumber(s)] = true
          end
          for s = hw, want + 1, -1 do
            if not seen[s] then
              return {'slot', tostring(i), tostring(s)}
            end
          end
        end
      end
    end
    plan[#plan + 1] = {i, k, want, was, hw}
  end
end
for _, p in ipairs(plan) do
  local i, k, want, was, hw = p[1], p[2], p[3], p[4], p[5]
  if want ~= was then
    redis.call('INCRBY', KEYS[k], want - was)
    if hw > want then
      redis.call('ZREMRANGEBYSCORE', KEYS[k + 2], '(' .. want, '+inf')
      redis.call('SET', KEYS[k + 1], tostring(want), 'KEEPTTL')
    end
  end
  redis.call('HSET', KEYS[1], 'last:' .. i, tostring(want))
end
return {'done'}
