-- promote.lua: replaces answers that are still what the caller expects
-- (gate: pending -> granted after commit; redis-queue: queued -> granted).
--
-- KEYS[1] ans     hash user -> answer
-- KEYS[2] queued  counter decremented per promotion when ARGV[1] == '1'
-- KEYS[3] pending zset of gate reservations; a promoted user leaves it
-- ARGV[1] '1' to decrement KEYS[2], else '0'
-- ARGV[2..] triples: user, expected answer ('' = no answer yet), new answer
-- Returns how many answers were replaced.
local n = 0
for i = 2, #ARGV, 3 do
  if (redis.call('HGET', KEYS[1], ARGV[i]) or '') == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    redis.call('ZREM', KEYS[3], ARGV[i])
    n = n + 1
  end
end
if n > 0 and ARGV[1] == '1' then
  redis.call('DECRBY', KEYS[2], n)
end
return n
