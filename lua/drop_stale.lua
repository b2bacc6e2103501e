-- drop_stale.lua: forgets a campaign's state whose generation PostgreSQL
-- has moved past (a rebuild started, or a racing rebuilder loaded an older
-- one): without meta, the next claim rebuilds from PostgreSQL. Compare-and-
-- delete, so a state loaded meanwhile under the new generation stays.
--
-- KEYS[1] meta
-- ARGV[1] the stale generation
-- Returns 1 when dropped, 0 when the state is gone or of another generation.
if redis.call('HGET', KEYS[1], 'gen') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
