-- unlock.lua: releases a lock or lease only if it is still ours (a holder
-- whose lock expired must not release its successor's).
--
-- KEYS[1] the lock (a campaign's rebuild lock, a stream's lease)
-- ARGV[1] the owner token it was taken with
-- Returns 1 when released, 0 when it was not (or no longer) ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
