-- progress.lua: the redis-queue drainer records the last arrival number it
-- has answered (granted or refused), so that a queued answer's position is
-- its arrival number minus this. Never moves back (a batch retried after a
-- crash re-answers earlier numbers).
--
-- KEYS[1] meta
-- ARGV[1] the highest arrival number of the batch just answered
-- Returns the recorded value.
local d = tonumber(redis.call('HGET', KEYS[1], 'done') or '0')
local n = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 and n > d then
  redis.call('HSET', KEYS[1], 'done', n)
  return n
end
return d
