-- release.lua: the compensating action. Returns a reservation's stock and
-- slot when its durable write failed for good, provided the user's answer
-- is still the one the caller saw (so a release runs at most once).
--
-- KEYS[1] meta    (for the expiry to put on a newly created free set)
-- KEYS[2] ans
-- KEYS[3] left    of the reservation's pool
-- KEYS[4] free    of the reservation's pool
-- KEYS[5] queued  counter, changed by ARGV[5]
-- KEYS[6] pending zset of gate reservations; a released user leaves it
-- KEYS[7] hw      of the reservation's pool
-- KEYS[8] sx      of the reservation's pool (sharded pools)
-- ARGV[1] user
-- ARGV[2] expected answer
-- ARGV[3] replacement answer; '' deletes it (the user may claim again)
-- ARGV[4] slot to free; '' when none was allocated, or when PostgreSQL
--         says another grant holds it (a slot is never freed on a guess)
-- ARGV[5] delta for KEYS[5]
-- ARGV[6] '1' to give the reservation's stock back to the door, '0' when
--         the unit it took was never there (its slot is held elsewhere)
-- ARGV[7] a slot PostgreSQL says is held (by the replacement answer), to
--         mark taken if Redis had it free or never handed out; '' for none
-- ARGV[8] sharded pools: this shard's range 'lo|hi'; '' when unsharded.
--         A unit given back waits in sx.retn until publish.lua (see there)
-- Returns 1 when released, 0 when the answer had changed, 2 when released
-- but the slot of ARGV[7] is outside this shard's range and not free here:
-- the caller cannot know where it sits, and drops the campaign's state.
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[6], ARGV[1])
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
local exp = redis.call('HGET', KEYS[1], 'exp')
local lo, hi = string.match(ARGV[8] or '', '^(%d+)|(%d+)$')
if ARGV[6] == '1' then
  if lo then
    redis.call('HINCRBY', KEYS[8], 'retn', 1)
  else
    redis.call('INCR', KEYS[3])
  end
end
local foreign = false
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[4])
end
if ARGV[7] ~= '' then
  local s = tonumber(ARGV[7])
  local hw = tonumber(redis.call('GET', KEYS[7]) or '0')
  if redis.call('ZREM', KEYS[4], ARGV[7]) == 1 then
    redis.call('DECR', KEYS[3])
  elseif lo and (s < tonumber(lo) or s > tonumber(hi)) then
    foreign = true
  elseif s > hw then
    for x = hw + 1, s - 1 do
      redis.call('ZADD', KEYS[4], x, x)
    end
    redis.call('SET', KEYS[7], ARGV[7], 'KEEPTTL')
    redis.call('DECR', KEYS[3])
  end
end
if exp and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('PEXPIREAT', KEYS[4], exp)
end
local d = tonumber(ARGV[5])
if d ~= 0 then
  redis.call('INCRBY', KEYS[5], d)
end
if foreign then
  return 2
end
return 1
