-- same_server.lua: forgets a campaign's state that this Redis server did
-- not load itself, in the history it serves now. init.lua records the
-- loading server's run_id and master_replid in meta; a restart (AOF or RDB
-- reload) or a failover to a replica brings meta back under a new run_id,
-- and a server that was made a replica and then promoted again (it took a
-- lagging master's data, same process) under a new master_replid --
-- possibly without the last writes either way (asynchronous replication,
-- everysec fsync, a snapshot). Such a state cannot be trusted
-- to hold every answer already told, so it is dropped like a lost one: the
-- next claim (or the worker) rebuilds it from PostgreSQL under a new
-- generation. A state loaded before this marker existed (no run field) is
-- dropped once too.
--
-- KEYS[1] meta
-- ARGV none
-- Returns 1 when the state was dropped, 0 when it is absent or this
-- server's own.
local run = redis.call('HGET', KEYS[1], 'run')
if run == false and redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local me = (string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or '?') .. ':' ..
  (string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)') or '?')
if run == me then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
