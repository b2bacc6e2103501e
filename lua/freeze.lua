-- freeze.lua: closes a fair-start campaign's pre-queue at opening (redis-
-- queue). Sets aside the arrival numbers 1..n for the n pre-queued users
-- (the draw gives each its place among them), takes from each pool's door
-- counter the units the pre-queue will use (its claimants, at most what is
-- left), counts them as queued, and appends the draw marker to the queue
-- stream, ahead of every claim after opening: the drainer meets the marker
-- first and admits the pre-queue in drawn order before anyone else.
-- Idempotent (meta 'pqs'), run by the first claim after opening and by the
-- worker each second, whichever comes first.
--
-- KEYS[1] meta, [2] seq, [3] queue (stream), [4] queued, [5] pq (list),
-- then per pool i (0-based): KEYS[6 + i] left
-- ARGV[1] number of pools
-- Returns 1 when it froze the pre-queue now, 0 when it was frozen before,
-- -1 when no state or no pre-queue, -2 before the opening.
local m = redis.call('HMGET', KEYS[1], 'opens', 'pq', 'pqs', 'exp')
if not m[2] or m[2] == '' then
  return -1
end
if m[3] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now < tonumber(m[1]) then
  return -2
end
local n = redis.call('LLEN', KEYS[5])
if n > 0 then
  redis.call('INCRBY', KEYS[2], n)
end
local q = 0
for i = 0, tonumber(ARGV[1]) - 1 do
  local c = tonumber(redis.call('HGET', KEYS[1], 'pqc:' .. i) or '0')
  local left = math.max(tonumber(redis.call('GET', KEYS[6 + i]) or '0'), 0)
  local take = math.min(c, left)
  if take > 0 then
    redis.call('DECRBY', KEYS[6 + i], take)
  end
  -- Pre-queued claimants beyond the stock: they will be refused in drawn
  -- order; one of them leaving frees nothing at the door (leave.lua).
  redis.call('HSET', KEYS[1], 'pqx:' .. i, c - take)
  q = q + c
end
redis.call('INCRBY', KEYS[4], q)
redis.call('XADD', KEYS[3], '*', 'op', 'draw', 'n', n)
-- 'pqn': the pre-queue's size, so its ranks (1..pqn) are told from later
-- arrivals' numbers (allocate.lua counts 'pqx' down by its refusals).
redis.call('HSET', KEYS[1], 'pqs', '1', 'pqn', n)
return 1
