-- settings.lua: applies an operator's change of a live campaign to one
-- shard's state: the pause flag, the window's end and, following it, the
-- expiry of every key (docs/ARCHITECTURE.md, "Operator controls"). The
-- caller wrote the change to PostgreSQL first and holds the campaign's
-- rebuild lock, so no rebuild loads older settings after this ran.
--
-- KEYS[1] meta, then every other key of the shard (missing ones are
-- skipped by PEXPIREAT), and last, when ARGV[4] is not '', the campaign's
-- rebuild lock (on the lock's shard: a sharded campaign's other shards are
-- in other hash slots)
-- ARGV[1] paused ('1' or '0'), ARGV[2] closes (ms since epoch, '' = none),
-- ARGV[3] the keys' expiry (ms since epoch), ARGV[4] the caller's token on
-- the rebuild lock, or ''
-- Returns 1 when applied, 0 when no state is loaded (the next rebuild
-- reads the settings from PostgreSQL), -1 when the caller no longer holds
-- the lock (nothing changed).
local nkeys = #KEYS
if ARGV[4] and ARGV[4] ~= '' then
  if redis.call('GET', KEYS[nkeys]) ~= ARGV[4] then
    return -1
  end
  nkeys = nkeys - 1
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'paused', ARGV[1], 'closes', ARGV[2], 'exp', ARGV[3])
for i = 1, nkeys do
  redis.call('PEXPIREAT', KEYS[i], ARGV[3])
end
return 1
