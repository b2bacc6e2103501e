-- drawn.lua: gives pre-queued users their place from the draw (fair start,
-- redis-queue): 'W|pidx' becomes 'Q|pidx|rank', the rank being the
-- arrival number freeze.lua set aside. Idempotent: any other answer (left,
-- already queued, granted, refused) is kept as it is.
--
-- KEYS[1] ans
-- ARGV pairs: user, rank
-- Returns the number of users it placed.
local n = 0
for i = 1, #ARGV, 2 do
  local a = redis.call('HGET', KEYS[1], ARGV[i])
  local pidx = a and string.match(a, '^W|(%d+)$')
  if pidx then
    redis.call('HSET', KEYS[1], ARGV[i], 'Q|' .. pidx .. '|' .. ARGV[i + 1])
    n = n + 1
  end
end
return n
