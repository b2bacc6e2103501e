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
-- server's own (its marker renewed after a replication id change that
-- moved no data).
local run = redis.call('HGET', KEYS[1], 'run')
if run == false and redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or '?'
local repl = redis.call('INFO', 'replication')
local me = id .. ':' .. (string.match(repl, 'master_replid:(%x+)') or '?')
if run == me then
  return 0
end
-- Same process, a new replication id and no previous one: the first
-- replica attached, or the backlog was freed after an hour without
-- replicas. The data did not change, only its history's name: keep the
-- state under the new marker. (A promotion keeps the old id as
-- master_replid2, so it is never taken for this.)
local replid2 = string.match(repl, 'master_replid2:(%x+)') or ''
if run and string.sub(run, 1, #id + 1) == id .. ':' and string.match(replid2, '^0+$') then
  redis.call('HSET', KEYS[1], 'run', me)
  return 0
end
redis.call('DEL', KEYS[1])
return 1
